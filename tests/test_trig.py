"""One-round secure sine/cosine (dealer-assisted) against plaintext and CrypTen's own."""

import math

import numpy as np
import pytest
import torch

import op_jobs
import sim
from mpc import approx, fourier

TOL = 4e-4  # 16-bit angle resolution (2pi/2^16 ~ 1e-4) plus one truncation of each product


def test_sincos_turns_matches_plaintext_in_one_round():
    u = torch.cat([torch.linspace(-40, 40, 997, dtype=torch.float64), torch.tensor([0.0, 0.25, -0.5, 1e3])])
    got, cost = op_jobs.run(sim.run, "sincos", u)
    expect = torch.stack([torch.sin(2 * math.pi * u), torch.cos(2 * math.pi * u)])
    assert (got - expect).abs().max() < TOL
    assert cost["rounds"] == 1
    assert cost["bytes"] == 2 * u.numel()  # 16 bits per element, one opening


def test_one_round_beats_crypten_cos_on_rounds_and_bytes():
    x = torch.linspace(-3, 3, 500, dtype=torch.float64)
    _, ours = op_jobs.run(sim.run, "sincos", x / (2 * math.pi))
    got, theirs = op_jobs.run(sim.run, "crypten_sincos", x)
    assert ours["rounds"] * 5 <= theirs["rounds"]
    assert ours["bytes"] * 20 <= theirs["bytes"]


@pytest.mark.parametrize("name,bound", [("silu", 16.0), ("gelu", 8.0)])
def test_fourier_activation_in_one_round_matches_its_oracle(name, bound):
    from mpc.fourier import activation_series

    x = torch.cat([torch.linspace(-bound, bound, 1999, dtype=torch.float64), torch.tensor([0.0, 1e-3, -bound])])
    got, cost = op_jobs.run(sim.run, "fourier", x, extra={"name": name, "bound": bound})
    series = activation_series(name, bound)
    # fixed point: x on a 2^-24-period grid, each coefficient and dealer share to 2^-17
    assert (got - series.series(x)).abs().max() < 2e-3
    exact = torch.nn.functional.silu(x) if name == "silu" else torch.nn.functional.gelu(x)
    assert (got - exact).abs().max() < 2e-3
    assert cost["rounds"] == 1
    assert cost["bytes"] == 4 * x.numel()  # 24-bit residues as int32, one opening


def test_per_channel_bounds_give_each_channel_group_its_own_series_and_fewer_dealer_shares():
    """An activation with one wide channel (bound 32) among narrow ones (bound 8): each group
    is evaluated with its own series, in place, in one round per group; the dealer sends
    shares for each group's harmonics only.  Control: the narrow series on the wide channel
    is far off (that is what the per-channel bound must avoid)."""
    from mpc.approx import ChannelBounds
    from mpc.fourier import activation_series

    torch.manual_seed(5)
    x = (torch.rand(3, 4, 6, dtype=torch.float64) * 2 - 1) * 8
    x[..., 2] *= 4  # channel 2 reaches ±32
    wide = ((32.0, (2,)),)
    got, cost = op_jobs.run(sim.run, "channel_activation", x, extra={"base": 8.0, "wide": wide})
    narrow, broad = activation_series("silu", 8.0), activation_series("silu", 32.0)
    expect = narrow.series(x)
    expect[..., 2] = broad.series(x[..., 2])
    assert (got - expect).abs().max() < 2e-3
    assert (narrow.series(x[..., 2]) - torch.nn.functional.silu(x[..., 2])).abs().max() > 1  # control
    assert cost["rounds"] == 2 and cost["bytes"] == 4 * x.numel()
    bounds = ChannelBounds(8.0, wide)
    assert bounds.largest == 32.0
    # the dealer's shares: 2K values of 8 bytes per element, K per group (plus a small header)
    per_group = 2 * 8 * (narrow.harmonics * 60 + broad.harmonics * 12)
    one_bound = 2 * 8 * broad.harmonics * x.numel()
    assert per_group <= cost["from_dealer"] < per_group * 1.05 < one_bound / 2


def test_plaintext_per_channel_activation_is_the_function_inside_every_bound_and_the_series_outside():
    """The oracle's one-pass path (every channel inside its own bound) gives what the
    group-by-group path gives; a narrow channel past its bound (though inside the wide one)
    takes the group path: counted by the monitor and evaluated with its own (periodic) series."""
    from mpc.approx import ApproxConfig, ChannelBounds, RangeMonitor, _per_channel, activation
    from mpc.fourier import activation_series

    torch.manual_seed(6)
    x = (torch.rand(2, 5, 6, dtype=torch.float32) * 2 - 1) * 8
    x[..., 2] *= 4
    bounds, cfg, monitor = ChannelBounds(8.0, ((32.0, (2,)),)), ApproxConfig(), RangeMonitor()
    assert bounds.hold(x)
    fast = activation(x, "silu", bounds, cfg, monitor)
    grouped = _per_channel(x, bounds, lambda part, b: activation(part, "silu", b, cfg, monitor))
    # the same function; its vectorised and strided kernels may differ in the last bit
    assert fast.dtype == torch.float32 and torch.allclose(fast, grouped, rtol=1e-6, atol=1e-7)
    assert not monitor.violations
    x[0, 0, 1] = 12.0  # channel 1's bound is 8
    assert not bounds.hold(x)
    out = activation(x, "silu", bounds, cfg, monitor)
    assert monitor.violations == {"activation_input": 1}
    assert out[0, 0, 1] == activation_series("silu", 8.0).series(x[0, 0, 1:2])[0]
    assert abs(float(out[0, 0, 1]) - float(torch.nn.functional.silu(x[0, 0, 1]))) > 1  # control


def test_channel_bounds_compress_and_expand_one_bound_per_channel():
    from mpc.approx import ChannelBounds

    per_channel = [8.0, 16.0, 8.0, 64.0, 16.0]
    bounds = ChannelBounds.of(per_channel)
    assert bounds == ChannelBounds(8.0, ((16.0, (1, 4)), (64.0, (3,))))
    assert bounds.per_channel(5) == per_channel
    assert [(b, c.tolist()) for b, c in bounds.groups(5)] == [(8.0, [0, 2]), (16.0, [1, 4]), (64.0, [3])]
    with pytest.raises(ValueError, match="listed once"):
        ChannelBounds(8.0, ((16.0, (1,)), (32.0, (1,))))
    with pytest.raises(ValueError, match="above the base"):
        ChannelBounds(8.0, ((8.0, (1,)),))
    with pytest.raises(ValueError, match="has 3 channels"):
        bounds.groups(3)


def test_oracle_is_the_series_outside_its_range_and_within_its_error_inside():
    from mpc.fourier import activation_series

    series = activation_series("silu", 8.0)
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    inside = x.abs() <= 8
    diff = (series.plain(x) - series.series(x)).abs()
    assert diff[inside].max() <= series.max_error + 1e-12
    assert diff[~inside].max() == 0  # out of range: the (wrong, periodic) series, as the secure run
    assert (series.series(x[~inside]) - torch.nn.functional.silu(x[~inside])).abs().max() > 1


def test_large_views_are_evaluated_in_chunks_that_agree_with_the_oracle():
    """A non-contiguous view (the fused gate|up product's half) larger than one chunk of
    dealer harmonics: several openings, same values.  The test forces the smallest chunk
    (4,096 values), so 6,000 values take two (a model's activations: 2^26 / 2K values each)."""
    from mpc.fourier import activation_series

    torch.manual_seed(4)
    x = (torch.rand(2, 3, 1000, dtype=torch.float64) * 2 - 1) * 16
    got, cost = op_jobs.run(sim.run, "fourier_view", x, extra={"bound": 16.0, "dealt_values": 1})
    assert (got - activation_series("silu", 16.0).series(x)).abs().max() < 2e-3
    assert cost["rounds"] == 2 and cost["bytes"] == 4 * x.numel()


def test_fourier_exp_matches_its_series():
    """The RFA features' exp(a/2) on the default range: a wide series (many harmonics) from one opening."""
    from mpc.approx import ApproxConfig
    from mpc.fourier import exp_series

    low, high = ApproxConfig().rfa_exp_low / 2, ApproxConfig().rfa_exp_high / 2
    x = torch.linspace(low, high, 4001, dtype=torch.float64)
    got, cost = op_jobs.run(sim.run, "fourier_exp", x, extra={"low": low, "high": high})
    assert (got - exp_series(low, high).series(x)).abs().max() < 2e-3  # values up to e^2
    assert cost["rounds"] == 1


@pytest.mark.parametrize(
    "f, low, high, kwargs",
    [
        *[(fourier.ACTIVATIONS[name], -b, b, dict(slope=0.5, even=True))
          for name, bounds in (("silu", (4.0, 16.0, 40.0, 64.0)), ("gelu", (8.0, 64.0)), ("gelu_tanh", (24.0,)))
          for b in bounds],
        (fourier.ACTIVATIONS["silu"], -2.0, 2.0, dict(slope=0.5, even=True, max_harmonics=48)),  # no fit
        (lambda r: r**-0.5, *approx.START_RANGE, dict(tol=1e-3)),
        (lambda r: r**-1.0, *approx.START_RANGE, dict(tol=1e-3)),
        (np.exp, -32.0, 2.0, dict(tol=3e-5 * math.exp(2.0), ridge=1e-10, ratio=1.5)),
        (np.exp, -4.0, 1.0, dict(tol=3e-5 * math.exp(1.0), ridge=1e-10, ratio=1.5, max_harmonics=48)),  # no fit
        (np.sin, -3.0, 3.0, dict(tol=1e-6, max_harmonics=40)),  # odd terms too, no fit
    ],
)
def test_screened_fit_is_the_direct_fit(f, low, high, kwargs):
    """The QR screen only skips K the direct search would pass over: same K, same coefficients."""
    def fit(screen):
        try:
            return fourier.fit_series(f, low, high, screen=screen, **kwargs)
        except ValueError as exc:
            return str(exc)

    direct, screened = fit(False), fit(True)
    assert screened == direct  # the dataclass compares K, every coefficient and max_error (not reference)


def test_harmonics_by_rotation_match_the_direct_formula():
    """The dealer's harmonics by rotation (mpc.trig.harmonic_table) against cos(nt), sin(nt):
    within 1e-12 before scaling (both round n·t: ~n·2π·2^-53 ≈ 1e-13 at n = 128); after scaling by 2^16 and rounding, equal but for values the
    direct formula puts within 1e-7 units of a rounding boundary (then one unit apart)."""
    from mpc import trig

    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 2**24, (4096,), generator=gen).double() * (2 * math.pi / 2**24)
    count = 128
    n = torch.arange(1, count + 1, dtype=torch.float64).view(-1, 1)
    direct = torch.cat([(n * t).cos(), (n * t).sin()])
    table = trig.harmonic_table(t, count)
    assert table.shape == direct.shape
    assert float((table - direct).abs().max()) < 1e-12
    scaled_direct, scaled = direct * 2**16, table * 2**16
    differ = scaled.round() != scaled_direct.round()
    near_boundary = ((scaled_direct - scaled_direct.floor()) - 0.5).abs() < 1e-7
    assert bool((~differ | near_boundary).all())
    assert float((scaled.round() - scaled_direct.round()).abs().max()) <= 1
