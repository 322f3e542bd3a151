"""One opening, many products (mpc.opened): the secure norm against its oracle."""

import math

import torch

import op_jobs
import sim
from mpc import approx


def test_secure_norm_matches_oracle_and_opens_each_tensor_once():
    torch.manual_seed(0)
    rows, width = 24, 64
    mean_squares = torch.logspace(math.log10(2e-5), math.log10(1e6), rows, dtype=torch.float64)
    x = torch.randn(rows, width, dtype=torch.float64)
    x = x / x.square().mean(-1, keepdim=True).sqrt() * mean_squares.sqrt().unsqueeze(-1)
    got, cost = op_jobs.run(sim.run, "normalize", x)
    want = approx.normalize(x, 1e-5, approx.ApproxConfig())
    err = (got - want).abs().max()
    # outputs are O(1); the smallest rows (rms 4.5e-3) carry 2^-16 / 4.5e-3 ~ 3e-3 relative
    # quantisation in their input already, rows with mean square from 2e-3 up stay below 5e-4
    assert err < 3e-3
    assert (got - want)[6:].abs().max() < 5e-4
    # one full-size opening (8 bytes per element); the rest is per row (9 comparisons, exact sums)
    full = 8 * x.numel()
    # one opening, one comparison batch, two exact truncations, a Fourier start and two Newton
    # steps (11 steps of 3 rounds from a fixed start before), the per-row products
    assert cost["rounds"] <= 30
    assert full <= cost["bytes"] < full + 8000 * rows


def test_secure_norm_of_large_rows_never_wraps():
    """Rows near the norm's ceiling (SmolLM2's massive activations: mean squares ~1e6 over 576
    values) have exact row sums up to 2^58 in the ring.  Divided by the width with CrypTen's
    two-party truncation they wrapped about once per 100 rows (scores of -1e9 in a SmolLM2
    forward); the norm now never divides them."""
    torch.manual_seed(1)
    rows, width = 1024, 576
    ceiling = approx.norm_ceiling(approx.ApproxConfig(), width)
    mean_squares = torch.logspace(math.log10(ceiling / 16), math.log10(ceiling * 0.95), rows, dtype=torch.float64)
    x = torch.randn(rows, width, dtype=torch.float64)
    x = x / x.square().mean(-1, keepdim=True).sqrt() * mean_squares.sqrt().unsqueeze(-1)
    got, _ = op_jobs.run(sim.run, "normalize", x)
    want = approx.normalize(x, 1e-5, approx.ApproxConfig())
    assert (got - want).abs().max() < 5e-4
