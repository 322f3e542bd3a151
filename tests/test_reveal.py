"""Exact fixed-point decoding (CrypTen's decoder is off by 1.0 for some negatives)."""

import torch

from mpc.reveal import decode

SCALE = 2**16


def test_decode_is_exact_near_negative_integers():
    values = torch.tensor([-3 * SCALE + 1, -1, -SCALE, 0, 1, SCALE + 1, -(2**40) + 7], dtype=torch.long)
    got = decode(values, SCALE)
    want = torch.tensor([v / SCALE for v in values.tolist()], dtype=torch.float64)
    assert torch.equal(got, want)
    assert got[0].item() == -3 + 2**-16


def test_decode_random_ring_elements_roundtrip():
    ring = torch.randint(-(2**50), 2**50, (10000,), dtype=torch.long)
    got = decode(ring, SCALE)
    assert torch.equal((got * SCALE).round().long(), ring)
