"""--mode privtune's split session: the two pieces compose to the plain model, the server
piece never holds the owner's data, releases are counted and per-call noise is fresh."""

import math

import pytest
import torch

from conftest import prepared_inputs
from secptune.checkpoints import load_hf_model
from secptune.cli import main
from secptune.plain import PlainSession
from secptune.privacy.mechanisms import MechanismParams
from secptune.privacy.neighbours import Importance, NeighbourGraph
from secptune.privacy.sampling import NoiseSource
from secptune.scoring import ScoringSession, score_batches
from secptune.server.prepare import prepare_server_model
from secptune.split import BottomModel, SplitOwner, SplitServer, SplitSession
from mpc import approx, costmodel
from secptune.report import _per_call


@pytest.fixture(scope="module")
def tiny():
    opts, prep = prepared_inputs("tiny-llama", prompt_len=0)
    server = prepare_server_model(load_hf_model(prep.model_dir))
    return prep, server


def session(prep, server, K, params, release="once", dtype=torch.float64, prompt_len=0):
    owner = SplitOwner(BottomModel(server, K, dtype), params, NoiseSource(),
                       NeighbourGraph(server.weights["emb.word"], params.knn),
                       Importance([[5, 6, 7], [5, 8]], [0, 1], 2))
    return SplitSession(owner, SplitServer(server, prep.verbalizer, K, dtype), release)


def plain_scores(prep, server):
    plain = PlainSession(prep.model_dir, prep.verbalizer, True, approx.ApproxConfig(), server=server)
    return score_batches(plain, prep.batches)


@pytest.mark.parametrize("K", [0, 1])
def test_eta_inf_reproduces_plain_scores(tiny, K):
    prep, server = tiny
    split = session(prep, server, K, MechanismParams(noise="dchi", eta=math.inf))
    assert isinstance(split, ScoringSession)
    got = score_batches(split, prep.batches)
    torch.testing.assert_close(got, plain_scores(prep, server), rtol=1e-9, atol=1e-9)


def test_noise_changes_scores_positive_control(tiny):
    """The equality above can fail: with noise the scores move."""
    prep, server = tiny
    split = session(prep, server, 1, MechanismParams(noise="dchi", eta=2.0))
    assert not torch.allclose(score_batches(split, prep.batches), plain_scores(prep, server), atol=1e-3)


def test_prompt_enters_at_the_split_layer_and_moves_scores(tiny):
    """With a prompt, the texts' release does not depend on it (sent once) and the prompt
    still changes the scores; bytes: one release plus P·H values per candidate per call."""
    _, prep = prepared_inputs("tiny-llama", prompt_len=3)
    server = tiny[1]
    split = session(prep, server, 1, MechanismParams(noise="dchi", eta=math.inf))
    tid = split.load_texts(prep.batches[0])
    released = split.server.texts[0].hidden.clone()
    p1, p2 = torch.zeros(1, 3, server.arch.hidden), torch.randn(1, 3, server.arch.hidden)
    s1, s2 = split.scores(tid, p1), split.scores(tid, p2)
    assert not torch.allclose(s1, s2)
    assert torch.equal(split.server.texts[0].hidden, released)  # once: no new release
    B, m, H = released.shape
    log = split.forward_log
    assert log[0]["bytes"] == (B * m * H + 3 * H) * 8 and log[0]["rounds"] == 2
    assert log[1]["bytes"] == 3 * H * 8 and log[1]["rounds"] == 1


def test_per_call_release_draws_fresh_noise(tiny):
    prep, server = tiny
    split = session(prep, server, 0, MechanismParams(noise="dchi", eta=50.0), release="per-call")
    tid = split.load_texts(prep.batches[0])
    empty = torch.zeros(1, 0, server.arch.hidden)
    split.scores(tid, empty)
    first = split.server.texts[0].hidden.clone()
    split.scores(tid, empty)
    assert not torch.equal(first, split.server.texts[0].hidden)
    assert split.forward_log[1]["bytes"] == first.numel() * 8


def _tensors(obj, seen=None):
    """Every tensor reachable from ``obj``'s attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _tensors(v, seen)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from _tensors(v, seen)


def _holds(server_obj, secret: torch.Tensor) -> bool:
    for t in _tensors(server_obj):
        if t.shape == secret.shape and torch.allclose(t.double(), secret.double()):
            return True
        if t.dtype == secret.dtype == torch.long and t.numel() >= secret.numel() and secret.numel() and \
                t.reshape(-1)[: secret.numel()].equal(secret.reshape(-1)):
            return True
    return False


@pytest.mark.parametrize("noise", ["dchi", "privtune"])
def test_server_never_holds_owner_data(tiny, noise):
    prep, server = tiny
    split = session(prep, server, 1, MechanismParams(noise=noise, eta=5.0))
    score_batches(split, prep.batches)
    for state, _, _ in split.texts:
        assert not _holds(split.server, state["ids"]), "the server holds the owner's token ids"
        assert not _holds(split.server, state["h"]), "the server holds clean representations"
    # positive control: the same scan finds them on the owner's side, and on the server's when
    # the mechanism releases clean rows (eta = inf)
    state = split.texts[0][0]
    assert _holds(split.owner, state["h"]) or _holds(split, state["h"])
    clean = session(prep, server, 1, MechanismParams(noise="dchi", eta=math.inf))
    score_batches(clean, prep.batches)
    assert _holds(clean.server, clean.texts[0][0]["h"])


def test_user_errors_speak_to_the_user(capsys):
    base = ["infer", "--mode", "privtune", "--task", "sst2", "--limit", "2"]
    cases = [
        (["--model", "tiny-roberta"], "causal models"),
        (["--model", "tiny-llama", "--split-layer", "5"], "--split-layer must be in 0..1"),
        (["--model", "tiny-llama", "--eta", "-3"], "--eta must be positive"),
        (["--model", "tiny-llama", "--record-view", "2"], "give --out DIR"),
        (["--model", "tiny-llama", "--exact"], "--exact is for --mode plain only"),
    ]
    for flags, message in cases:
        assert main(base + flags) == 2
        assert message in capsys.readouterr().err


def test_split_calls_are_costed_on_modelled_links():
    log = [{"texts": 0, "wall_s": 0.2, "bytes": 4_000_000, "rounds": 2, "server_bytes": 1000},
           {"texts": 0, "wall_s": 0.2, "bytes": 1000, "rounds": 1, "server_bytes": 1000}]
    pc = _per_call(log, popsize=2)
    assert pc["bytes"] == 4_001_000 / 4 and pc["rounds"] == 0.75 and pc["server_bytes"] == 500
    assert pc["links_s"]["WAN"] == pytest.approx(costmodel.WAN.added_s(4_001_000 / 4, 0.75))
    assert pc["links_s"]["WAN"] > pc["links_s"]["LAN"] > 0
