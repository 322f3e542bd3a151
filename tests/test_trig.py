"""One-round secure sine/cosine (dealer-assisted) against plaintext and CrypTen's own."""

import math

import torch

import op_jobs

TOL = 4e-4  # 16-bit angle resolution (2pi/2^16 ~ 1e-4) plus one truncation of each product


def test_sincos_turns_matches_plaintext_in_one_round():
    u = torch.cat([torch.linspace(-40, 40, 997, dtype=torch.float64), torch.tensor([0.0, 0.25, -0.5, 1e3])])
    got, cost = op_jobs.run("sincos", u)
    expect = torch.stack([torch.sin(2 * math.pi * u), torch.cos(2 * math.pi * u)])
    assert (got - expect).abs().max() < TOL
    assert cost["rounds"] == 1
    assert cost["bytes"] == 2 * u.numel()  # 16 bits per element, one opening


def test_one_round_beats_crypten_cos_on_rounds_and_bytes():
    x = torch.linspace(-3, 3, 500, dtype=torch.float64)
    _, ours = op_jobs.run("sincos", x / (2 * math.pi))
    got, theirs = op_jobs.run("crypten_sincos", x)
    assert ours["rounds"] * 5 <= theirs["rounds"]
    assert ours["bytes"] * 20 <= theirs["bytes"]
