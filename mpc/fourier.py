"""Smooth functions of secret values in one round: dealer-assisted Fourier series.

A function f that is smooth on a stated range [low, high] is fitted (least
squares, plaintext, public) by

    f(x) ≈ slope·x + a_0 + Σ_{n=1..K} a_n cos(2πn x/P) + b_n sin(2πn x/P)

with a period P a little longer than the range (ratio 1.25), so the periodic
extension has room to bend back smoothly and the coefficients decay fast and stay
small (no cancellation that fixed point would punish).  Under MPC every harmonic
of x comes from *one* masked opening (:func:`mpc.trig.masked_angle`): 4 bytes per
element and one round, whatever K is; the dealer sends 2K shares per element
offline.  The linear part slope·x is exact and local.

Outside [low, high] the series is wrong (periodic), so callers pass a
:class:`~mpc.approx.RangeMonitor` and the plaintext oracle counts such inputs.
GeLU and SiLU are x/2 plus an even function, so they need cosines only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from mpc.tensorops import cat, is_secure, within
from mpc.trig import combine, masked_angle

PERIOD_BITS = 8  # x is rescaled so one period spans 2^8 units: 24-bit circle, 2^-24-period resolution
FRAC_BITS = 16
RATIO = 1.25  # period / range length
DEALT_VALUES = 2**26  # dealer shares held at once (512 MiB of int64)
RIDGE = 1e-8  # roughness penalty: keeps Σ|a_n| near the function's own size (fixed-point error ∝ Σ|a_n|)


@dataclass(frozen=True)
class FourierSeries:
    """slope·x + Σ a_n cos(2πnx/P) + b_n sin(2πnx/P), accurate to ``max_error`` on [low, high]."""

    low: float
    high: float
    period: float
    slope: float
    cos: tuple[float, ...]  # a_0 .. a_K
    sin: tuple[float, ...]  # b_1 .. b_K, or () for an even remainder
    max_error: float
    # the fitted function (torch): inside [low, high] the oracle may use it instead of
    # the series (they differ by at most max_error); outside, only the series is right
    reference: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def harmonics(self) -> int:
        return len(self.cos) - 1

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The oracle of :func:`evaluate` on plaintext: the fitted function inside the range
        (within ``max_error`` of the series, and far cheaper), the series outside it."""
        if self.reference is None:
            return self.series(x)
        out = self.reference(x)
        if within(x, self.low, self.high):
            return out
        outside = (x < self.low) | (x > self.high)
        if bool(outside.any()):  # the series on those elements only: it costs K harmonics each
            out = out.clone()
            out[outside] = self.series(x[outside])
        return out

    def series(self, x: torch.Tensor) -> torch.Tensor:
        """The series itself, everywhere."""
        angle = x * (2 * math.pi / self.period)
        out = x * self.slope + self.cos[0]
        for n, (cos_n, sin_n) in enumerate(harmonics(angle, self.harmonics), start=1):
            out = out + self.cos[n] * cos_n
            if self.sin:
                out = out + self.sin[n - 1] * sin_n
        return out


def harmonics(angle: torch.Tensor, count: int):
    """(cos nθ, sin nθ) for n = 1..count by rotation: a few multiply-adds per
    harmonic instead of a sin and a cos (plaintext activations are hot code)."""
    c1, s1 = angle.cos(), angle.sin()
    c, s = c1, s1
    for _ in range(count):
        yield c, s
        c, s = c * c1 - s * s1, s * c1 + c * s1


def _basis(x: np.ndarray, period: float, k: int, even: bool) -> np.ndarray:
    angle = np.outer(x, np.arange(0, k + 1)) * (2 * math.pi / period)
    cols = [np.cos(angle)] + ([] if even else [np.sin(angle[:, 1:])])
    return np.concatenate(cols, axis=1)


def _roughness(period: float, k: int, even: bool, points: int, ridge: float) -> np.ndarray:
    """Penalty on each coefficient ∝ its harmonic's second derivative (n·2π/P)²."""
    freq = np.arange(0, k + 1) * (2 * math.pi / period)
    weights = np.concatenate([freq, [] if even else freq[1:]]) ** 2
    return weights * math.sqrt(ridge * points)


def _ridge(basis: np.ndarray, penalty: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin |Bc − y|² + |diag(penalty)·c|²: a smooth bridge, so no large cancelling coefficients."""
    stacked = np.vstack([basis, np.diag(penalty)])
    coef, *_ = np.linalg.lstsq(stacked, np.concatenate([y, np.zeros(len(penalty))]), rcond=None)
    return coef


SCREEN_MARGIN = 0.05  # a screened error this far above tol is not close: its K is skipped


def _screened_errors(x: np.ndarray, y: np.ndarray, period: float, kmax: int, even: bool, ridge: float):
    """Yields (K, max error of the ridge fit with K harmonics) for K = 2, 4, ... ≤ kmax.

    The penalty of a column depends on its frequency only, so the fit with K harmonics is
    the least-squares problem of the first columns of one stacked matrix (harmonics in
    order: cos 0, [cos 1, sin 1], [cos 2, sin 2], ...); Householder QR of that matrix gives
    every prefix's solution R[:m, :m]⁻¹(Qᵀb)[:m].  The matrix grows in doubling blocks of
    harmonics (16, 32, ...), so a small K costs a small QR.  An estimate in float64: the
    direct fit (numpy's SVD least squares) agrees to far below SCREEN_MARGIN·tol."""
    done = 0
    block = 16
    while done < kmax:
        top = min(kmax, block)
        n = np.arange(0, top + 1)
        angle = np.outer(x, n) * (2 * math.pi / period)
        freq2 = (n * (2 * math.pi / period)) ** 2
        if even:
            basis, weights = np.cos(angle), freq2
        else:
            basis = np.empty((len(x), 2 * top + 1))
            basis[:, 0] = 1.0
            basis[:, 1::2], basis[:, 2::2] = np.cos(angle[:, 1:]), np.sin(angle[:, 1:])
            weights = np.concatenate([freq2[:1], np.repeat(freq2[1:], 2)])
        penalty = weights * math.sqrt(ridge * len(x))
        q, r = np.linalg.qr(np.vstack([basis, np.diag(penalty)]))
        qb = q.T @ np.concatenate([y, np.zeros(len(penalty))])
        for k in range(done + 2 - done % 2, top + 1, 2):
            m = k + 1 if even else 2 * k + 1
            coef = np.linalg.solve(r[:m, :m], qb[:m])
            yield k, float(np.abs(basis[:, :m] @ coef - y).max())
        done, block = top, 2 * block


def fit_series(
    f: Callable[[np.ndarray], np.ndarray],
    low: float,
    high: float,
    *,
    slope: float = 0.0,
    even: bool = False,
    tol: float = 1e-4,
    max_harmonics: int = 128,
    ridge: float = RIDGE,
    ratio: float = RATIO,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    screen: bool = True,
) -> FourierSeries:
    """The fewest harmonics whose (lightly smoothed) least-squares fit of f − slope·x is within ``tol`` on [low, high].

    The search tries K = 2, 4, ... in turn.  With ``screen`` (default) one QR factorisation
    first estimates every K's error (:func:`_screened_errors`), and only the K whose estimate
    comes within :data:`SCREEN_MARGIN` of ``tol`` (and the last K) get the direct fit: the same
    K and the same coefficients as trying every K directly (``screen=False``; tested), at a
    fraction of the cost (K = 80: 3.7 s → 0.2 s, paid by each party at its first forward)."""
    if not high > low:
        raise ValueError(f"empty range [{low}, {high}]")
    period = ratio * (high - low)
    x = np.linspace(low, high, 8001)
    y = f(x) - slope * x
    candidates = range(2, max_harmonics + 1, 2)
    screened = _screened_errors(x, y, period, max_harmonics, even, ridge) if screen else None
    best = None
    for k in candidates:
        if screened is not None:
            k_screened, estimate = next(screened)
            assert k_screened == k
            if estimate > tol * (1 + SCREEN_MARGIN) and k != candidates[-1]:
                continue  # far from good enough: the direct fit would not stop here either
        basis = _basis(x, period, k, even)
        coef = _ridge(basis, _roughness(period, k, even, len(x), ridge), y)
        err = float(np.abs(basis @ coef - y).max())
        best = (k, coef, err)
        if err <= tol:
            break
    if best is None:
        raise ValueError(f"no harmonics to try: max_harmonics={max_harmonics}")
    k, coef, err = best
    if err > tol:
        raise ValueError(f"no Fourier fit within {tol} on [{low}, {high}] with {max_harmonics} harmonics (best {err:.2e})")
    cos, sin = coef[: k + 1], () if even else tuple(float(c) for c in coef[k + 1 :])
    return FourierSeries(low, high, period, slope, tuple(float(c) for c in cos), sin, err, reference)


def evaluate(x, series: FourierSeries):
    """The series at x (plaintext tensor or secret MPCTensor); secure: 4 B per element and one
    round per chunk of elements (chunks bound the dealer's 2K shares per element in memory)."""
    if not is_secure(x):
        return series.plain(x)
    chunk = max(4096, DEALT_VALUES // (2 * series.harmonics))
    if x.numel() <= chunk:
        return _evaluate_secure(x, series)
    flat = x.flatten()
    parts = [_evaluate_secure(flat[i : i + chunk], series) for i in range(0, flat.numel(), chunk)]
    return cat(parts).reshape(x.size())


def _evaluate_secure(x, series: FourierSeries):
    k = series.harmonics
    circle = x * (2.0**PERIOD_BITS / series.period)  # a local truncation; its rare 2^48 errors vanish mod 2^24
    theta, cos_t, sin_t = masked_angle(circle, FRAC_BITS + PERIOD_BITS, k)

    def terms():
        for n, (cos_n, sin_n) in enumerate(harmonics(theta, k), start=1):
            a, b = series.cos[n], (series.sin[n - 1] if series.sin else 0.0)
            yield a * cos_n + b * sin_n, cos_t[n - 1]
            yield a * sin_n - b * cos_n, sin_t[n - 1]

    out = combine(terms()) + series.cos[0]
    return out + x * series.slope if series.slope else out


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"silu": _silu, "gelu": _gelu, "gelu_tanh": _gelu_tanh}
REFERENCES = {
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


@lru_cache(maxsize=64)
def activation_series(name: str, bound: float, tol: float = 1e-4) -> FourierSeries:
    """GeLU/SiLU on [−bound, bound] as x/2 + an even (cosine) series."""
    if name not in ACTIVATIONS:
        raise ValueError(f"no Fourier activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return fit_series(ACTIVATIONS[name], -bound, bound, slope=0.5, even=True, tol=tol, reference=REFERENCES[name])


@lru_cache(maxsize=16)
def power_series(exponent: float, low: float, high: float, tol: float = 1e-3) -> FourierSeries:
    """r^exponent on [low, high] (0 < low): a one-round start for Newton's reciprocal and
    inverse square root, whose steps then square the remaining error."""
    return fit_series(lambda r: r**exponent, low, high, tol=tol, reference=lambda t: t**exponent)


@lru_cache(maxsize=16)
def exp_series(low: float, high: float) -> FourierSeries:
    """exp on [low, high] (RFA feature maps): its steep end needs a lighter smoothing,
    a longer bridge and a tolerance relative to its largest value e^high."""
    return fit_series(np.exp, low, high, tol=3e-5 * math.exp(high), ridge=1e-10, ratio=1.5, reference=torch.exp)


@lru_cache(maxsize=16)
def half_saturating_exp_series(low: float, knee: float, reach: float) -> FourierSeries:
    """h ↦ e^h / sqrt(1 + e^(2h − 2·knee)) on [low, reach]: squared, e^a / (1 + e^(a − 2·knee))
    at a = 2h, i.e. exp below the knee and a plateau at e^(2·knee) above it.

    Why: an RFA feature argument past the range the server fitted on (task text, a
    tuned prompt) must give a large feature, not the periodic series' wrap-round to a
    tiny one; the plateau also keeps every feature, hence every product, below e^(2·knee)
    in fixed point.  The same tolerance as :func:`exp_series` relative to the top value."""
    if not low < knee < reach:
        raise ValueError(f"saturating exp needs low < knee < reach, not {low}, {knee}, {reach}")
    return fit_series(
        lambda h: np.exp(h - 0.5 * np.logaddexp(0.0, 2 * h - 2 * knee)),
        low,
        reach,
        tol=3e-5 * math.exp(knee),
        ridge=1e-10,
        ratio=1.5,
        reference=lambda t: torch.exp(t - 0.5 * torch.nn.functional.softplus(2 * t - 2 * knee)),
    )
