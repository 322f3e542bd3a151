"""Noise mechanisms: dχ statistics, cryptographic randomness, PrivTune's crafted mean."""

import math

import pytest
import torch

from mpc import prg
from secptune.errors import InputError
from secptune.privacy.mechanisms import MechanismParams, crafted_mean, dchi_noise, distinguish_bound, parse_eta, perturb
from secptune.privacy.neighbours import Importance, NeighbourGraph
from secptune.privacy.sampling import NoiseSource


def test_dchi_norm_is_h_over_eta_within_2_percent():
    H, eta = 64, 25.0
    z = dchi_noise(NoiseSource(), 10_000, H, eta)
    norms = z.norm(dim=-1)
    assert abs(norms.mean().item() / (H / eta) - 1) < 0.02
    # Gamma(H, 1/eta): variance H/eta^2 (a wrong sampler that only gets the mean right fails here)
    assert abs(norms.var().item() / (H / eta**2) - 1) < 0.1
    # the direction is uniform: mean of unit vectors ~ 0, each coordinate's variance 1/H
    unit = z / norms.unsqueeze(-1)
    assert unit.mean(0).abs().max() < 5 / math.sqrt(10_000 * H)
    assert abs(unit.var(0).mean().item() * H - 1) < 0.05


def test_dchi_norm_positive_control_detects_wrong_scale():
    """The 2 % check can fail: noise drawn at 1.05 eta is caught."""
    H, eta = 64, 25.0
    norms = dchi_noise(NoiseSource(), 10_000, H, eta * 1.05).norm(dim=-1)
    assert abs(norms.mean().item() / (H / eta) - 1) > 0.02


def test_eta_inf_adds_nothing_and_bad_eta_is_refused():
    assert torch.equal(dchi_noise(NoiseSource(), 3, 8, math.inf), torch.zeros(3, 8))
    assert parse_eta("inf") == math.inf and parse_eta("25") == 25.0
    for bad in ("0", "-1", "x"):
        with pytest.raises(InputError):
            parse_eta(bad)


def test_noise_comes_from_the_aes_stream():
    """Same key, same noise; different keys, different noise; the stream advances (so the
    bits really come from mpc.prg, not from torch's generator, which is left untouched)."""
    key = bytes(range(32))
    state = torch.get_rng_state()
    a, b = NoiseSource(key), NoiseSource(key)
    za, zb = dchi_noise(a, 4, 16, 3.0), dchi_noise(b, 4, 16, 3.0)
    assert torch.equal(za, zb)
    assert not torch.equal(za, dchi_noise(NoiseSource(bytes(32)), 4, 16, 3.0))
    assert a.stream.drawn > 0 and isinstance(a.stream, prg.Stream)
    assert torch.equal(state, torch.get_rng_state())


def test_distinguish_bound():
    assert distinguish_bound(0.0, 1.0) == 0.5
    assert abs(distinguish_bound(1.0, 1.0) - math.e / (1 + math.e)) < 1e-12
    assert distinguish_bound(1e9, 1.0) == 1.0


def test_crafted_mean_moves_towards_target_less_for_important_tokens():
    p = MechanismParams(noise="privtune", eta=math.inf, lam=1.0, radius=1.0)
    h, t = torch.zeros(2, 4), torch.ones(2, 4)
    d = crafted_mean(h, t, torch.tensor([0.0, 1.0]), p)
    assert torch.allclose(d[0], torch.full((4,), 0.5)) and torch.allclose(d[1], torch.full((4,), 1 / 3))
    capped = crafted_mean(h, t, torch.zeros(2), MechanismParams(noise="privtune", lam=0.0, radius=0.2))
    assert torch.allclose(capped, torch.full((2, 4), 0.2))


def test_privtune_noise_scale_shrinks_with_importance():
    p = MechanismParams(noise="privtune", eta=10.0, lam=0.0, radius=0.0, beta=0.5)
    h = torch.zeros(4000, 32)
    out = perturb(h, p, NoiseSource(), target=h, importance=torch.cat([torch.zeros(2000), torch.ones(2000)]))
    low, high = out[:2000].norm(dim=-1).mean(), out[2000:].norm(dim=-1).mean()
    assert abs(low / 3.2 - 1) < 0.03 and abs(high / 1.6 - 1) < 0.03


def test_n_hop_ring_is_exactly_n_hops_away():
    torch.manual_seed(0)  # the table only (public data); no noise is drawn here
    table = torch.randn(50, 8)
    g = NeighbourGraph(table, k=3)
    ring1, ring2 = g.ring([0], 1)[0], g.ring([0], 2)[0]
    assert len(ring1) == 3 and 0 not in ring2 and not set(ring1) & set(ring2)
    assert set(ring2) <= {v for u in ring1 for v in g._knn[u]}
    target = g.targets(torch.tensor([[0]]), 2)[0, 0]
    assert torch.allclose(target, table[ring2].double().mean(0))


def test_importance_prefers_label_informative_rare_tokens():
    docs = [[1, 2, 9], [1, 2, 9], [1, 3, 9], [1, 3, 9]]
    imp = Importance(docs, [0, 0, 1, 1], 2)
    w = imp.of([1, 2, 9])
    assert w[1] == 1.0 and w[0] < w[1] and w[2] < w[1]
