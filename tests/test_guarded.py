"""--mode guarded (GuardedTuning): the quantiser's error bound, the distance correlation against
a direct computation, split gradients equal the unsplit model's, 8-bit traffic, what crosses in
each variant, and that the server object never holds the owner's data."""

import math

import numpy as np
import pytest
import torch

from conftest import prepared_inputs
from secptune.checkpoints import load_hf_model
from secptune.cli import main
from secptune.guarded import (
    GuardedClient,
    GuardedServer,
    GuardedSession,
    distance_correlation,
    harden_input_adapter,
    quantise,
    text_rows,
)
from secptune.nonlinear import ExactNonlinear
from secptune.server.prepare import prepare_server_model
from secptune.transformer import Transformer
from test_privacy_split import _holds

LABELS = [torch.tensor([1, 0]), torch.tensor([1, 0])]  # conftest.SENTENCES in batches of 2


@pytest.fixture(scope="module")
def tiny():
    _, prep = prepared_inputs("tiny-llama", prompt_len=0)
    return prep, prepare_server_model(load_hf_model(prep.model_dir))


def guarded(prep, server, variant="online", bits=32, dcor=0.0, lr=1e-3, dtype=torch.float64, recorder=None):
    client = GuardedClient(server, prep.verbalizer, 1, 0, dtype)
    srv = GuardedServer(server, 1, 0, dtype, recorder)
    session = GuardedSession(client, srv, variant, bits, dcor, lr, recorder, server)
    ids = [session.load_texts(b) for b in prep.batches]
    return session, ids


# -- the quantiser ----------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_quantiser_round_trip_within_half_a_step(bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(5, 7, 33, generator=gen) * torch.logspace(-3, 2, 33)  # rows of very different ranges
    x[0, 0] = 3.0  # a constant row: step 1, exact
    back, nbytes = quantise(x, bits)
    rows = x.reshape(-1, 33)
    step = (rows.max(-1).values - rows.min(-1).values) / (2**bits - 1)
    err = (back - x).abs().reshape(-1, 33).max(-1).values
    assert torch.all(err <= step / 2 * (1 + 1e-4) + 1e-6)
    assert torch.equal(back[0, 0], x[0, 0])
    assert nbytes == 35 * (math.ceil(33 * bits / 8) + 8)
    # positive control: the bound is tight enough to fail: fewer bits, larger error than 8 bits allow
    if bits == 2:
        step8 = step * 3 / (2**8 - 1)
        assert torch.any(err > step8)


def test_quantiser_32_bits_is_the_identity():
    x = torch.randn(3, 5, dtype=torch.float64)
    back, nbytes = quantise(x, 32)
    assert torch.equal(back, x) and nbytes == 15 * 8


# -- distance correlation -----------------------------------------------------------
def _dcor_direct(x: np.ndarray, z: np.ndarray) -> float:
    """Székely et al.'s definition, term by term with explicit O(n²) loops."""
    n = len(x)

    def centred(v):
        d = [[float(np.sqrt(((v[i] - v[j]) ** 2).sum())) for j in range(n)] for i in range(n)]
        row = [sum(d[i]) / n for i in range(n)]
        col = [sum(d[i][j] for i in range(n)) / n for j in range(n)]
        tot = sum(row) / n
        return [[d[i][j] - row[i] - col[j] + tot for j in range(n)] for i in range(n)]

    a, b = centred(x), centred(z)
    mean = lambda p, q: sum(p[i][j] * q[i][j] for i in range(n) for j in range(n)) / n**2  # noqa: E731
    return math.sqrt(mean(a, b) / math.sqrt(mean(a, a) * mean(b, b)))


def test_distance_correlation_equals_direct_computation():
    rng = np.random.default_rng(3)
    for n, p, q in ((12, 3, 5), (20, 8, 2)):
        x = rng.normal(size=(n, p))
        z = np.tanh(x @ rng.normal(size=(p, q))) + 0.3 * rng.normal(size=(n, q))
        got = float(distance_correlation(torch.tensor(x), torch.tensor(z)))
        assert got == pytest.approx(_dcor_direct(x, z), rel=1e-9)
    x = torch.tensor(rng.normal(size=(30, 4)))
    assert float(distance_correlation(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-9)  # similarity: 1
    far = torch.tensor(rng.normal(size=(30, 4)))
    assert float(distance_correlation(x, far)) < 0.6  # independent: far from 1 (positive control)


def test_distance_correlation_has_finite_gradients_with_repeated_rows():
    x = torch.randn(6, 3, dtype=torch.float64)
    z = torch.cat([x[:3], x[:3]]).clone().requires_grad_(True)  # zero distances off the diagonal
    distance_correlation(x, z).backward()
    assert torch.isfinite(z.grad).all()


# -- the split computes the unsplit model's gradients ----------------------------------
def _unsplit_grads(prep, server, batch, labels):
    w = {k: v.double().clone().requires_grad_(True) for k, v in server.weights.items()}
    rows = (prep.verbalizer.double() @ w["head.out"])
    model = Transformer(server.arch, w, ExactNonlinear())
    ids = batch.token_onehot.ids
    h = model.causal(w["emb.word"][ids])
    pooled = (h * batch.pred_onehot.double().unsqueeze(-1)).sum(1)
    loss = torch.nn.functional.cross_entropy(model.score(pooled, (rows, None)), labels)
    loss.backward()
    return w


@pytest.mark.parametrize("bits", [32, 8])
def test_online_split_gradients_equal_the_unsplit_model(tiny, bits):
    prep, server = tiny
    session, ids = guarded(prep, server, bits=bits, lr=0.0)
    session.step(ids[0], LABELS[0])
    ref = _unsplit_grads(prep, server, prep.batches[0], LABELS[0])
    inp = session.client.inp.w
    pairs = [(inp[k].grad, ref[k].grad) for k in ("l0.q.w", "l0.down.w", "emb.word")]
    if bits == 32:
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    else:  # positive control: the comparison can fail (8-bit gradients and activations cross)
        assert any(not torch.allclose(got, want, rtol=1e-6, atol=1e-9) for got, want in pairs)


def test_eight_bit_wire_cuts_bytes_by_at_least_70_percent(tiny):
    prep, server = tiny
    traffic = {}
    for bits in (32, 8):
        session, ids = guarded(prep, server, bits=bits, dtype=torch.float32)
        for tid, y in zip(ids, LABELS):
            session.step(tid, y)
        traffic[bits] = sum(f["bytes"] + f["server_bytes"] for f in session.forward_log)
        assert all(f["rounds"] == 2 for f in session.forward_log)  # online: two round trips a step
    assert 1 - traffic[8] / traffic[32] >= 0.70


# -- what crosses in each variant ---------------------------------------------------
class _Tap:
    """A recorder stand-in: what the server was handed, by kind."""

    def __init__(self):
        self.rows, self.grads, self.loaded = [], [], []

    def server_received(self, text_id, release):
        self.rows.append(release.hidden.clone())

    def server_received_grad(self, text_id, grad):
        self.grads.append(grad.clone())

    def owner_loaded(self, text_id, batch, ids, positions):
        self.loaded.append(text_id)


def test_gradfree_sends_no_gradient_and_each_text_once(tiny):
    prep, server = tiny
    tap = _Tap()
    session, ids = guarded(prep, server, variant="gradfree", recorder=tap)
    before = {k: v.detach().clone() for k, v in session.client.inp.w.items()}
    for _ in range(3):
        for tid, y in zip(ids, LABELS):
            session.step(tid, y)
    assert tap.grads == [] and len(tap.rows) == len(ids)
    assert [f["bytes"] > 0 for f in session.forward_log] == [True, True] + [False] * 4
    assert all(torch.equal(before[k], v) for k, v in session.client.inp.w.items())  # input adapter frozen
    # positive control: online does send gradients
    tap2 = _Tap()
    online, ids2 = guarded(prep, server, recorder=tap2)
    online.step(ids2[0], LABELS[0])
    assert len(tap2.grads) == 1


def test_gradfree_hardening_lowers_the_distance_correlation(tiny):
    prep, server = tiny
    session, _ = guarded(prep, server, variant="gradfree")
    client = session.client
    batches = [(b.token_onehot.ids, b.pred_onehot) for b in prep.batches]

    def dcor_now():
        ids, pred = batches[0]
        e, z = client.activations(ids)
        mask = text_rows(ids, pred)
        return float(distance_correlation(e[mask], z[mask]))

    start = dcor_now()
    losses = harden_input_adapter(client, batches, dcor=5.0, steps=40, lr=1e-2)
    assert len(losses) == 40 and losses[-1] < losses[0]
    assert dcor_now() < start
    assert harden_input_adapter(client, batches, dcor=0.0, steps=40, lr=1e-2) == []  # no regulariser: untouched


def test_offline_tunes_on_the_emulator_with_no_traffic(tiny):
    prep, server = tiny
    tap = _Tap()
    session, ids = guarded(prep, server, variant="offline", recorder=tap)
    for tid, y in zip(ids, LABELS):
        session.step(tid, y)
    first, rest = session.forward_log[0], session.forward_log[1:]
    emulator_bytes = sum(v.numel() * v.element_size() for v in session.client.emulator.w.values())
    assert first["server_bytes"] == emulator_bytes and first["bytes"] == 0
    assert all(f["bytes"] == f["server_bytes"] == f["rounds"] == 0 for f in rest)
    assert tap.rows == []  # nothing about the texts crossed while tuning
    session.scores(ids[0])  # scoring runs the real backbone, split
    assert len(tap.rows) == 1


# -- the server object never holds the owner's data ------------------------------------
@pytest.mark.parametrize("variant", ["online", "gradfree", "offline"])
def test_server_never_holds_owner_data(tiny, variant):
    prep, server = tiny
    session, ids = guarded(prep, server, variant=variant, bits=8)
    for tid, y in zip(ids, LABELS):
        session.step(tid, y)
        session.scores(tid)
    for tid, y in zip(ids, LABELS):
        tokens, _, _ = session.texts[tid]
        embeds, _ = session.client.activations(tokens)
        assert not _holds(session.server, tokens), "the server holds the owner's token ids"
        assert not _holds(session.server, y), "the server holds the owner's labels"
        assert not _holds(session.server, embeds.detach()), "the server holds the owner's embeddings"
    # positive control: the same scan finds them on the owner's side
    assert _holds(session.client, session.client.inp.w["emb.word"]) and _holds(session, session.texts[0][0])


def test_user_errors_speak_to_the_user(capsys):
    base = ["tune", "--mode", "guarded", "--task", "sst2", "--k", "1", "--test-limit", "2"]
    cases = [
        (["--model", "tiny-roberta"], "causal models"),
        (["--model", "tiny-llama", "--in-layers", "2"], "must leave the server at least one"),
        (["--model", "tiny-llama", "--quant-bits", "20"], "--quant-bits must be 1..16 or 32"),
        (["--model", "tiny-llama", "--exact"], "--mode plain"),
    ]
    for flags, message in cases:
        assert main(base + flags) == 2
        assert message in capsys.readouterr().err
