"""The MPC-friendly approximations are accurate on their stated ranges (plaintext)."""

import math

import pytest
import torch

from mpc import approx
from mpc.tensorops import max_along

CFG = approx.ApproxConfig()


def grid(lo, hi, n=2001):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def test_exp_on_softmax_range():
    x = grid(-2 * CFG.logit_bound, 0)
    err = (approx.exp(x, CFG.exp_iters) - x.exp()).abs()
    assert err.max() < 3e-3  # absolute: these feed a normalised sum


@pytest.mark.parametrize("lo,hi", [(1.0, 2.0), (1.0, 64.0), (1.0, 512.0)])
def test_reciprocal_on_range(lo, hi):
    x = grid(lo, hi)
    rel = (approx.reciprocal(x, lo, hi) * x - 1).abs()
    assert rel.max() < 1e-5


def test_normalize_on_whole_norm_range():
    lo, hi = CFG.norm_range[0], approx.norm_ceiling(CFG, 64)  # 2^30 / 64: the exact row sums' limit
    ms = torch.logspace(math.log10(lo), math.log10(hi), 300, dtype=torch.float64)
    torch.manual_seed(0)
    x = torch.randn(300, 64, dtype=torch.float64)
    x = x / x.square().mean(-1, keepdim=True).sqrt() * ms.sqrt().unsqueeze(-1)  # rows with mean square ms
    want = x / (x.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    assert (approx.normalize(x, 1e-5, CFG) - want).abs().max() < 1e-8


def test_sigmoid_silu_gelu():
    x = grid(-30, 30)
    # the limit exp (8 squarings) bounds the tail accuracy
    assert (approx.sigmoid(x, CFG) - torch.sigmoid(x)).abs().max() < 1e-3
    assert (approx.silu(x, CFG) - torch.nn.functional.silu(x)).abs().max() < 3e-3
    # sigmoid-GeLU differs from erf-GeLU by design: bounded and small
    assert (approx.gelu(x, CFG) - torch.nn.functional.gelu(x)).abs().max() < 0.03


def test_softmax_with_penalty_mask():
    torch.manual_seed(0)
    s = torch.randn(3, 5, 7, dtype=torch.float64) * 8
    mask = (torch.rand(3, 1, 7) < 0.3).double()
    mask[..., 0] = 0  # every row keeps at least one key
    ref = torch.softmax(s.masked_fill(mask > 0.5, float("-inf")), -1)
    got = approx.softmax(s, mask, CFG)
    assert (got - ref).abs().max() < 2e-3


def test_norms_match_torch():
    """The model's approximate norms (γ/β applied after, as the folded linears do) against torch's."""
    from secptune.nonlinear import Nonlinear

    nl = Nonlinear(cfg=CFG)
    torch.manual_seed(0)
    x = torch.randn(4, 9, 32, dtype=torch.float64) * 3 + 1
    w, b = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(x, (32,), w, b, 1e-5)
    assert (nl.normalize(x, 1e-5, centre=True) * w + b - ln).abs().max() < 1e-5
    rms = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * w
    assert (nl.normalize(x, 1e-5, centre=False) * w - rms).abs().max() < 1e-5


def test_range_monitor_counts_violations():
    monitor = approx.RangeMonitor()
    approx.sigmoid(torch.tensor([0.0, 100.0, -200.0], dtype=torch.float64), CFG, monitor)
    assert monitor.violations == {"sigmoid": 2}


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_tree_max(n):
    x = torch.randn(3, 4, n, dtype=torch.float64)
    # b + (a - b) may differ from a in the last float bit
    torch.testing.assert_close(max_along(x, -1), x.max(-1, keepdim=True).values, rtol=0, atol=1e-12)


def test_secure_power_of_two_scale_never_fails_truncation_on_many_rows():
    """The range reduction's weights reach 2^20; multiplied as fixed point they made
    two-party truncation fail about once per 4,000 rows (wild norms, retried forwards)."""
    import op_jobs
    import sim

    torch.manual_seed(3)
    v = torch.exp(torch.empty(20000, 1, dtype=torch.float64).uniform_(math.log(1e-3), math.log(60.0)))
    # clear of the thresholds 16^j, where the 2^-16 encoding of v may tip a comparison either way
    position = torch.log(v) / math.log(16)
    v = v[(position - position.round()).abs() > 0.01].unsqueeze(-1)
    got, _ = op_jobs.run(sim.run, "pow2_scale", v)
    s, s_sq = approx.power_of_two_scale(v, 1e-5, 64.0)
    want = torch.cat([s, s_sq], dim=-1)
    assert ((got - want).abs() / want).max() < 1e-3
