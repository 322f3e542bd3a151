"""The left-to-right exhaustive search (secptune.privacy.search) on tiny-llama's guarded split:
it recovers an undefended view's text, is at chance on views of other text, and fails when the
view is noised or made by a bottom it does not know (so its successes mean something)."""

import pytest
import torch

from conftest import prepared_inputs
from secptune.checkpoints import load_hf_model
from secptune.guarded import GuardedClient
from secptune.inputs import Example
from secptune.privacy.search import CausalSearch, frequency_order
from secptune.privacy.whitebox import GuardedPipeline
from secptune.server.prepare import prepare_server_model
from secptune.split_job import public_pool

TEXTS = 16  # public SST-2 texts (~25 tokens each: ~400 tokens scored)


@pytest.fixture(scope="module")
def split():
    """The undefended split: pretrained input adapter (embeddings + layer 0), its rows per text."""
    pool = public_pool("sst2", None, limit=TEXTS, seed=3)
    examples = [Example(ex.text, None, int(ex.label)) for ex in pool]
    _, prep = prepared_inputs("tiny-llama", prompt_len=0, batch_size=TEXTS, examples=examples)
    server = prepare_server_model(load_hf_model(prep.model_dir))
    client = GuardedClient(server, prep.verbalizer, 1, 0, torch.float32)
    for w in client.inp.parameters() + client.out.parameters():
        w.requires_grad_(False)
    batch = prep.batches[0]
    ids = batch.token_onehot.ids
    keep = batch.pred_onehot.argmax(-1) + 1  # each text's rows up to its prediction position (no padding)
    return server, client, ids, keep


def _release(client, ids, bits=32):
    pipe = GuardedPipeline(client, bits)
    positions = torch.arange(ids.size(1))
    return pipe.release(pipe.clean(ids, positions), 0).hidden.float(), positions


def _recovery(search, rows, positions, ids, keep) -> float:
    guesses = search.on_items(list(rows), [positions] * len(rows))
    hits = sum(int((g[:n] == i[:n]).sum()) for g, i, n in zip(guesses, ids, keep.tolist()))
    return hits / int(keep.sum())


def _search(client, **kw):
    return CausalSearch(client.inp.model, client.inp.layers, progress=False, **kw)


def test_incremental_rows_equal_the_full_forward(split):
    """The per-position forward with cached keys/values is the bottom model itself."""
    _, client, ids, keep = split
    rows, positions = _release(client, ids[:1])
    search = _search(client)
    cache = search.start()
    for t in range(int(keep[0])):
        row = search._forward(ids[0, t : t + 1], cache, t)[0]
        assert torch.allclose(row, rows[0, t], atol=1e-4, rtol=1e-4)
        cache = search._extend(cache, int(ids[0, t]), t)


@pytest.mark.parametrize("bits", [32, 8])
def test_search_recovers_the_undefended_split(split, bits):
    """Positive control: exact (32-bit) and 8-bit views of the undefended split give the text back;
    the early exit at the quantiser's bound and the chunking change nothing."""
    _, client, ids, keep = split
    rows, positions = _release(client, ids, bits)
    assert _recovery(_search(client, bits=bits), rows, positions, ids, keep) >= 0.95
    search, full = _search(client, bits=bits, chunk=128), _search(client, bits=bits)
    full.bound = lambda y: -1.0  # never stop early: the global nearest token at every position
    one = [rows[0]]
    assert torch.equal(search.on_items(one, [positions])[0], full.on_items(one, [positions])[0])
    assert search.rows_run < full.rows_run  # the walk stopped early somewhere


def test_search_is_at_chance_on_views_of_other_text(split):
    """Null views: the bottom's rows for uniformly random tokens (the search recovers *those*
    tokens) and Gaussian rows of the view's spread.  Scored against the real text, a uniform
    guess hits with probability 1/V ≈ 0.001 per token; a frequent-token prior could do better
    on Gaussian rows, but SST-2's commonest token is ~5 % of text tokens, so 0.06 bounds both
    (over ~400 scored tokens, a 1/V hit rate exceeds 0.06 with probability < 1e-20)."""
    server, client, ids, keep = split
    gen = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, server.arch.vocab_size, ids.shape, generator=gen)
    rows, positions = _release(client, random_ids)
    search = _search(client)
    assert _recovery(search, rows, positions, ids, keep) <= 0.06
    assert _recovery(search, rows, positions, random_ids, keep) >= 0.95  # it did work, on the other text
    real, _ = _release(client, ids)
    gauss = torch.randn(real.shape, generator=gen) * real.std(0) + real.mean(0)
    assert _recovery(search, gauss, positions, ids, keep) <= 0.06


def test_search_degrades_when_the_view_is_noised_or_made_by_another_bottom(split):
    """It can fail: Gaussian noise on the rows (spread σ·the rows' spread) costs recovery as σ
    grows, and rows made by an input adapter the attacker does not know (another random
    first layer: a decorrelated view) leave it near chance."""
    server, client, ids, keep = split
    rows, positions = _release(client, ids)
    search = _search(client)
    gen = torch.Generator().manual_seed(1)
    spread = rows.std()
    got = [_recovery(search, rows + s * spread * torch.randn(rows.shape, generator=gen), positions, ids, keep)
           for s in (0.0, 0.3, 3.0)]
    assert got[0] >= 0.95 and got[0] >= got[1] >= got[2] and got[2] <= 0.3
    other = GuardedClient(server, torch.zeros(1, server.arch.vocab_size), 1, 0, torch.float32)
    with torch.no_grad():
        for k, w in other.inp.w.items():
            if k.startswith("l0."):
                w.copy_(w[torch.randperm(w.size(0), generator=gen)])  # the same weights, rows permuted
    theirs, _ = _release(other, ids)
    assert _recovery(search, theirs, positions, ids, keep) <= 0.2


def test_walk_caps_the_candidates_and_guesses_go_first(split):
    """A capped walk tries at most ``walk`` tokens per position (plus the proposer's guesses,
    tried first): a text of tokens outside the walk is lost unless the proposer names them."""
    _, client, ids, keep = split
    rows, positions = _release(client, ids[:2])
    order = torch.arange(client.inp.model.w["emb.word"].size(0))
    outside = order[~torch.isin(order, ids[:2])][:50]  # a walk that holds none of the text's tokens
    capped = _search(client, order=outside, walk=50)
    assert _recovery(capped, rows, positions, ids[:2], keep[:2]) == 0.0
    assert capped.rows_run <= 50 * rows.size(0) * rows.size(1)
    for r, i, n in zip(rows, ids, keep.tolist()):  # a proposer that names the truth: found, walk or not
        named = _search(client, order=outside, walk=50, proposer=lambda q, k, i=i: i.unsqueeze(1))
        assert torch.equal(named.on_items([r], [positions])[0][:n], i[:n])


def test_frequency_order_puts_public_tokens_first():
    order = frequency_order(torch.tensor([5, 5, 5, 2, 2, 7]), 8)
    assert order[:3].tolist() == [5, 2, 7] and sorted(order.tolist()) == list(range(8))
