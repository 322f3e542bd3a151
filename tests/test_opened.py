"""One opening, many products (mpc.opened): the secure norm against its oracle."""

import math

import torch

import op_jobs
from mpc import approx


def test_secure_norm_matches_oracle_and_opens_each_tensor_once():
    torch.manual_seed(0)
    rows, width = 24, 64
    mean_squares = torch.logspace(math.log10(2e-3), math.log10(3e4), rows, dtype=torch.float64)
    x = torch.randn(rows, width, dtype=torch.float64)
    x = x / x.square().mean(-1, keepdim=True).sqrt() * mean_squares.sqrt().unsqueeze(-1)
    got, cost = op_jobs.run("normalize", x)
    want = approx.normalize(x, 1e-5, approx.ApproxConfig())
    assert (got - want).abs().max() < 2e-3  # outputs are O(1): ~2^-9 relative
    # four full-size openings (8 bytes per element each); the rest is per row (26 comparisons)
    full = 4 * 8 * x.numel()
    assert full <= cost["bytes"] < full + 8000 * rows
