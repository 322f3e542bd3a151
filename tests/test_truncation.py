"""Exact truncation with the dealer (mpc.truncation) against local truncation's failures."""

import pytest
import torch

import op_jobs
import sim


def test_exact_truncation_of_values_near_the_bound():
    torch.manual_seed(0)
    # x·2^16·2^25 spans ±2^61: CrypTen's local truncation would fail on ~1/16 of them
    x = (torch.rand(20000, dtype=torch.float64) * 2 - 1) * 2**20
    x[:4] = torch.tensor([2**20 - 2**-16, -(2**20), 0.0, -(2**-16)])
    got, cost = op_jobs.run(sim.run, "exact_truncate", x)
    units = (x * 2**16).long().double()  # CrypTen encodes by truncation toward zero
    # slot 0: ⌊Z/2^25⌋ = x at scale 2^16, one unit high at most
    high_by = torch.round(got[0] * 2**16) - units
    assert set(high_by.unique().tolist()) <= {0.0, 1.0}
    # slot 1: ⌊Z/2^41⌋ = ⌊x⌋ (as a ring value; read at scale 2^16 it is ⌊x⌋·2^-16)
    floor_units = torch.floor(units / 2**16)
    assert set((torch.round(got[1] * 2**16) - floor_units).unique().tolist()) <= {0.0, 1.0}
    assert (cost["bytes"], cost["rounds"]) == (8 * 2 * x.numel(), 1)  # one opening of both slots


def test_exact_truncation_rejects_bad_shifts():
    from mpc.truncation import truncate_shares

    with pytest.raises(ValueError, match="shift"):
        truncate_shares(torch.zeros(1, 3, dtype=torch.long), (63,))
    with pytest.raises(ValueError, match="do not match"):
        truncate_shares(torch.zeros(2, 3, dtype=torch.long), (16,))
