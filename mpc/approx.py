"""MPC-friendly approximations of the non-linear functions a transformer needs.

Each function uses only additions, products, public constants and exact
comparisons, so it runs unchanged on float64 torch tensors and on secret-shared
CrypTen tensors.  The float64 run is the *oracle*: the secure run must match it up
to fixed-point error.  Each approximation states the input range on which it is
accurate; :class:`RangeMonitor` counts plaintext values that fall outside, so the
oracle run tells a user when a model or input leaves the safe range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mpc import fourier
from mpc.accounting import section
from mpc.opened import open_once
from mpc.tensorops import cat, gt_zero, is_secure, max_along, public_like, within


@dataclass(frozen=True)
class ApproxConfig:
    """Accuracy/cost knobs, each with the range it is valid on.

    exp_iters:       exp(x) = (1 + x/2^k)^(2^k); accurate for x in [-2^k, ~4].
    logit_bound:     attention logits are assumed in [-bound, bound].
    mask_penalty:    subtracted from masked logits; masked entries then sit below
                     every real logit and their exp underflows to 0 (needs
                     2*bound + penalty <= 2^exp_iters).
    norm_range:      variance / mean-square range accepted by LayerNorm / RMSNorm
                     (power-of-4 range reduction, so a wide range is cheap).
    rfa_exp:         RFA feature exponentials: "fourier" (exp(a/2) from one
                     opening, then squared; on [rfa_exp_low, rfa_exp_reach]) or
                     "limit" (exp_iters squarings).
    rfa_exp_low:     smallest RFA feature exponent.  The series is periodic, so an
                     argument below it wraps round to a large, wrong feature; a
                     wide low end costs harmonics (dealer shares, offline) but no
                     online bytes, and every exp below ~e^-11 is 0 in fixed point.
    rfa_exp_high:    the knee of the RFA feature exponential: below it the feature is
                     ~e^a, above it e^a / (1 + e^(a − high)) levels off at e^high, so
                     features and their products stay bounded in fixed point.
    rfa_exp_reach:   largest RFA feature exponent the series covers (the range check's
                     top): arguments in (high, reach], which text the server never saw
                     produces now and then, saturate instead of wrapping round.
    rfa_den_range:   range of RFA's attention denominators (power-of-4 reduction).
    activation:      "fourier": GeLU/SiLU as x/2 + a cosine series on [-bound, bound]
                     (one opening, mpc.fourier; bound per layer from the model's
                     calibration); "sigmoid": x·σ(x) from a comparison, exp and
                     reciprocal (any input, ~500 bytes per element).
    range_check:     secure runs: test sampled inputs of every ranged approximation
                     against their ranges under MPC and reveal one bit per forward
                     to the data owner (:class:`RangeMonitor`); plaintext runs count
                     every input instead and ignore this and ``range_samples``.
    range_samples:   positions sampled (uniformly, with replacement, public) per
                     ranged call; a call whose inputs are out of range at a fraction
                     f is detected with probability 1 − (1 − f)^range_samples.
    """

    exp_iters: int = 8
    logit_bound: float = 60.0
    mask_penalty: float = 100.0
    norm_range: tuple[float, float] = (1e-5, 2.0**28)
    sigmoid_bound: float = 60.0
    rfa_exp: str = "fourier"
    rfa_exp_low: float = -64.0
    rfa_exp_high: float = 4.0
    rfa_exp_reach: float = 16.0
    rfa_den_range: tuple[float, float] = (2.0**-10, 2.0**20)
    activation: str = "fourier"
    range_check: bool = True
    range_samples: int = 256

    @staticmethod
    def from_dict(d: dict) -> "ApproxConfig":
        """Inverse of dataclasses.asdict, also after a trip through pickle/JSON (lists)."""
        return ApproxConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class RangeMonitor:
    """Inputs outside an approximation's range.

    Plaintext (the oracle): every input is tested and counted in ``violations``.
    Secret-shared (``samples`` > 0): each call keeps ``samples`` of its inputs at public
    positions (uniform with replacement, drawn from the stream both parties share,
    independent of every secret) with the call's public bounds; :meth:`secure_verdict`
    then tests all of them in one batched comparison and returns a secret bit, 1 iff
    some sampled input was out of range.
    """

    violations: dict[str, int] = field(default_factory=dict)
    samples: int = 0  # secure runs: positions sampled per call; 0 = no check under MPC
    pending: list = field(default_factory=list)  # secure runs: (name, sampled inputs, low, high)

    def check(self, name: str, x, low: float, high: float) -> None:
        if is_secure(x):
            if self.samples:
                self.pending.append((name, sample_positions(x, self.samples), float(low), float(high)))
            return
        if within(x, low, high):
            return
        bad = int(((x < low) | (x > high)).sum())
        if bad:
            self.violations[name] = self.violations.get(name, 0) + bad

    def secure_verdict(self):
        """Secret bit [1] (fixed point): 1 iff a sampled input since the last verdict lies
        outside its range; None when nothing was sampled.  Two comparisons (rounds of
        CrypTen's comparison circuit): one batched over 2 values per sample (below the low
        end, above the high end), one of their sum against 1/2.  Clears the samples."""
        if not self.pending:
            return None
        pending, self.pending = self.pending, []
        with section("range_check"):
            diffs = []
            for _, values, low, high in pending:
                diffs += [low - values, values - high]  # > 0: below low / above high
            outside = gt_zero(cat(diffs))
            return gt_zero(outside.sum().reshape(1) - 0.5)

    def sampled_calls(self) -> list[str]:
        return [name for name, *_ in self.pending]


def sample_positions(x, count: int):
    """``count`` elements of the secret tensor x at uniform public positions (with
    replacement) from the "global" stream both parties hold: the same positions on both
    sides, independent of x's values.  Returns a flat secret tensor [count]."""
    import crypten

    stream = crypten.generators["global"][torch.device("cpu")]
    flat = torch.remainder(stream.ring((count,)), x.numel())  # bias ≤ numel·2^-64: none in practice
    index = torch.unravel_index(flat, tuple(x.size()))
    device = getattr(x, "device", torch.device("cpu"))
    return x[tuple(i.to(device) for i in index)]


NO_MONITOR = RangeMonitor()


def exp(x, iters: int = 8):
    """exp(x) by the limit (1 + x/2^k)^(2^k): k squarings, k rounds."""
    y = 1 + x * (1.0 / 2**iters)
    for _ in range(iters):
        y = y.square()
    return y


def feature_exp(arg, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    """exp of RFA feature arguments, as configured (``rfa_exp``)."""
    if cfg.rfa_exp == "fourier":
        # exp(a) = exp(a/2)^2: the half-range series has 15x smaller coefficients, hence
        # 15x less fixed-point error, for one more opening (8 bytes per element)
        monitor.check("rfa_exp_argument", arg, cfg.rfa_exp_low, cfg.rfa_exp_reach)
        half = fourier.evaluate(arg * 0.5, feature_exp_series(cfg))
        return open_once(half).square(last=True)
    if cfg.rfa_exp != "limit":
        raise ValueError(f"unknown RFA exponential {cfg.rfa_exp!r}: fourier or limit")
    monitor.check("rfa_exp_argument", arg, -(2.0**cfg.exp_iters), cfg.rfa_exp_high)
    return exp(arg, cfg.exp_iters)


def feature_exp_series(cfg: ApproxConfig) -> fourier.FourierSeries:
    """The half-argument series whose square is the RFA feature exponential (saturating
    above ``rfa_exp_high``, valid up to ``rfa_exp_reach``)."""
    return fourier.half_saturating_exp_series(cfg.rfa_exp_low / 2, cfg.rfa_exp_high / 2, cfg.rfa_exp_reach / 2)


def newton_iterations(low: float, high: float, shrink: float) -> int:
    """Newton steps so that a start error of (1 - low/high) reaches ~2^-20.

    ``shrink`` is the per-step exponent of the error recursion (2 for reciprocal).
    """
    start = max(1e-12, 1 - low / high)
    target = 2.0**-20
    return max(1, math.ceil(math.log(math.log(target) / math.log(start), shrink)) + 1)


def reciprocal(x, low: float, high: float):
    """1/x for x in [low, high] by Newton's y <- y(2 - xy) from y0 = 1/high.

    The error e = 1 - x*y squares every step and starts below 1 - low/high, so the
    step count follows from the range (no data-dependent branching).
    """
    y = x * 0 + 1.0 / high
    for _ in range(newton_iterations(low, high, 2)):
        y = y * (2 - x * y)
    return y


def divide_wide(num, den, low: float, high: float):
    """num / den for den in a wide range [low, high] (den > 0).

    A secret power of two s² (one batched comparison) brings den·s² into [1, 16);
    Newton runs there, and num is rescaled by the same exact power of two, so
    neither a tiny reciprocal nor a huge one is ever held in fixed point.
    """
    _, s2 = power_of_two_scale(den, low, high)
    return (num * s2) * reciprocal_reduced(den * s2)


def sigmoid(x, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    """sigma(x) from |x|: one comparison, exp on (-inf, 0], reciprocal on [1, 2]."""
    monitor.check("sigmoid", x, -cfg.sigmoid_bound, cfg.sigmoid_bound)
    positive = gt_zero(x)
    magnitude = x * (2 * positive - 1)
    tail = exp(-magnitude, cfg.exp_iters)  # in (0, 1]
    r = reciprocal(1 + tail, 1.0, 2.0)  # sigma(|x|) in [1/2, 1)
    return (1 - r) + positive * (2 * r - 1)


def silu(x, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    return x * sigmoid(x, cfg, monitor)


def gelu(x, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    """GeLU(x) ~ x * sigma(1.702 x) (max abs error ~0.02 against the erf form)."""
    return x * sigmoid(1.702 * x, cfg, monitor)


FOURIER_KINDS = {"silu": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


@dataclass(frozen=True)
class ChannelBounds:
    """Input bounds of an activation per channel (the last dim): ``base`` for every channel
    but those listed in ``wide``, ((bound, channels), ...) with bound > base.

    Why: a Fourier series needs harmonics in proportion to its bound, and in a trained model
    a few outlier channels set a layer's largest input (SmolLM2: one channel of 1,536 reaches
    a bound of 64, nearly all stay under 8).  With one bound per layer every element pays for
    the outlier; per channel, the dealer's shares and their generation shrink ~2.5x."""

    base: float
    wide: tuple[tuple[float, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        listed = [c for _, channels in self.wide for c in channels]
        if len(set(listed)) != len(listed) or any(c < 0 for c in listed):
            raise ValueError(f"a channel may be listed once, with an index >= 0: {self.wide}")
        if any(bound <= self.base for bound, _ in self.wide):
            raise ValueError(f"wide channels need a bound above the base {self.base}: {self.wide}")

    @property
    def largest(self) -> float:
        return max([self.base] + [bound for bound, _ in self.wide])

    def groups(self, width: int) -> list[tuple[float, torch.Tensor]]:
        """(bound, channel indices) per group, the base group (the unlisted channels) first."""
        listed = [c for _, channels in self.wide for c in channels]
        if listed and max(listed) >= width:
            raise ValueError(f"channel {max(listed)} is listed but the activation has {width} channels")
        rest = sorted(set(range(width)) - set(listed))
        out = [(self.base, torch.tensor(rest, dtype=torch.long))] if rest else []
        return out + [(bound, torch.tensor(channels, dtype=torch.long)) for bound, channels in self.wide]

    @staticmethod
    def of(per_channel: list[float]) -> "ChannelBounds":
        """Compressed form of one bound per channel: the smallest bound is the base."""
        base = min(per_channel)
        wide: dict[float, list[int]] = {}
        for channel, bound in enumerate(per_channel):
            if bound > base:
                wide.setdefault(bound, []).append(channel)
        return ChannelBounds(base, tuple((b, tuple(c)) for b, c in sorted(wide.items())))

    def per_channel(self, width: int) -> list[float]:
        out = [self.base] * width
        for bound, channels in self.wide:
            for c in channels:
                out[c] = bound
        return out

    def hold(self, x: torch.Tensor) -> bool:
        """Whether every channel of a plaintext x lies within its own bound: one min/max pass
        per channel, so that the oracle evaluates groups apart only when some channel is out."""
        width = x.size(-1)
        if x.numel() == 0:
            return True
        smallest, largest = x.reshape(-1, width).aminmax(dim=0)
        limit = torch.tensor(self.per_channel(width), dtype=x.dtype, device=x.device)
        return bool((smallest >= -limit).all() and (largest <= limit).all())


def activation(x, name: str, bound: float | ChannelBounds, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    """The model's activation ``name`` on inputs assumed in [-bound, bound] (one bound, or
    one per channel: each group of channels then gets the series of its own bound)."""
    if cfg.activation == "fourier":
        if name not in FOURIER_KINDS:
            raise ValueError(f"activation {name!r} is not supported")
        if isinstance(bound, ChannelBounds):
            if not is_secure(x) and bound.hold(x):
                # inside its range each group's oracle is the fitted function itself
                # (FourierSeries.plain): one pass of it serves every channel, no selection, no put-back
                return fourier.REFERENCES[FOURIER_KINDS[name]](x)
            return _per_channel(x, bound, lambda part, b: activation(part, name, b, cfg, monitor))
        monitor.check("activation_input", x, -bound, bound)
        return fourier.evaluate(x, fourier.activation_series(FOURIER_KINDS[name], float(bound)))
    if cfg.activation != "sigmoid":
        raise ValueError(f"unknown activation approximation {cfg.activation!r}: fourier or sigmoid")
    return silu(x, cfg, monitor) if name == "silu" else gelu(x, cfg, monitor)


def _per_channel(x, bounds: ChannelBounds, evaluate):
    """``evaluate(channels, bound)`` on each group of channels of x, put back in place.
    Selecting channels is local on shares; only the series differ per group."""
    groups = bounds.groups(x.size(-1))
    if len(groups) == 1:
        return evaluate(x, groups[0][0])
    device = getattr(x, "device", torch.device("cpu"))
    index = [channels.to(device) for _, channels in groups]
    parts = [evaluate(x.index_select(-1, channels), bound) for (bound, _), channels in zip(groups, index)]
    inverse = torch.argsort(torch.cat(index))
    return cat(parts, dim=-1).index_select(-1, inverse)


def softmax(scores, penalty_mask, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR):
    """Softmax over the last dim; ``penalty_mask`` is 1 where a key is hidden, else 0.

    Hidden keys get ``mask_penalty`` subtracted so that they never win the max and
    their exponential underflows to 0; works for a public causal mask and for the
    data owner's secret padding mask alike (the product with a public constant is
    local either way).
    """
    monitor.check("attention_logit", scores, -cfg.logit_bound, cfg.logit_bound)
    if penalty_mask is not None:
        scores = scores - penalty_mask * cfg.mask_penalty
    shifted = scores - max_along(scores, -1)
    e = exp(shifted, cfg.exp_iters)
    total = e.sum(-1, keepdim=True)  # in [1, n]: the max entry contributes exp(0) = 1
    return e * reciprocal(total, 1.0, float(scores.size(-1)))


def power_of_two_scale(v, low: float, high: float, bits: int = 2, factors=((1, 1.0), (2, 1.0)), unit: float = 1.0):
    """Secret powers of two (s, s^2) with (v/unit) * s^2 in [1, 4^bits), for v/unit in [low, high].

    One batched comparison of v against every power of 4^bits in the range gives
    the interval; s and s^2 are public linear combinations of the comparison bits.
    Exact powers of two keep the rescaling itself free of rounding.  Comparisons
    are the costly part (~230 bytes each), so levels of 16 (``bits=2``) take half as
    many as levels of 4 and leave a 4x wider interval to the Newton iterations that
    follow (cheap: per row).  ``factors`` lists the (p, c) for which c·s^p is
    returned (default s and s²): a constant folded into the weights stays exact
    where the product of a returned s with it would underflow.  A public ``unit`` (v is
    ``unit`` times the value to scale) moves into the thresholds: a large v is never divided
    (two-party truncation of a ring value Z fails with probability ~|Z|·2^-64).
    """
    level = 4.0**bits
    k_lo, k_hi = math.floor(math.log(low, level)), math.ceil(math.log(high, level))
    levels = list(range(k_lo + 1, k_hi))

    def power(j: int, p: int) -> float:  # s^p on the interval above level j
        return 2.0 ** (-bits * j * p)

    if not levels:
        return tuple(v * 0 + c * power(k_lo, p) for p, c in factors)
    above = gt_zero(cat([v - unit * level**j for j in levels], dim=-1))  # one comparison round
    if not is_secure(above):
        # plaintext: the combination telescopes from c·s^p at the low end (up to 2^20) to the
        # result (down to 2^-40); its partial sums need ~60 bits, float64 holds them exactly,
        # float32's 24 bits gave 0 for every s² below ~2^-4 (norms of mean square above ~10^3).
        # Combined in float64, the exact power of two then returns to v's precision exactly.
        above = above.double()
    return tuple(
        public_like(bit_combination(above, [c * (power(j, p) - power(j - 1, p)) for j in levels]) + c * power(k_lo, p), v)
        for p, c in factors
    )


def bit_combination(bits, weights: list[float]):
    """Σ_j bits_j · w_j over the last dim, for secret 0/1 bits and public weights.

    Whole-number weights multiply the shares as integers — exact, no truncation.
    Through a fixed-point product a weight w would leave a ring value w·2^32 to
    truncate, and two-party truncation fails with probability ~w·2^-32: with the
    2^20-sized weights a wide range reduction needs, about once per 4,000 rows.
    """
    whole = [w if float(w).is_integer() else 0.0 for w in weights]
    frac = public_like(torch.tensor([0.0 if float(w).is_integer() else w for w in weights], dtype=torch.float64), bits)
    out = (bits * frac).sum(-1, keepdim=True)
    if not any(whole):
        return out
    if is_secure(bits):
        scaled = bits.clone()
        scaled._tensor.mul_(torch.tensor(whole, dtype=torch.float64).long())  # integer product: no truncation
    else:
        scaled = bits * public_like(torch.tensor(whole, dtype=torch.float64), bits)
    return out + scaled.sum(-1, keepdim=True)


GAIN_BITS = 12  # = 16^3: the comparisons' levels of 16 line up with and without the gain
COARSE_BITS = 8  # Σx²·2^-8 carries large rows, whose s² (down to 2^-24) underflows 16 bits
SUM_BITS = 30  # Σx² < 2^30 keeps its ring value Σx²·2^32 below 2^62 (mpc.truncation)
REDUCED_RANGE = (0.25, 16.0)


def norm_ceiling(cfg: ApproxConfig, width: int) -> float:
    """The largest mean square a norm over ``width`` values accepts."""
    return min(cfg.norm_range[1], 2.0**SUM_BITS / width)


def normalize(x, eps: float, cfg: ApproxConfig, monitor: RangeMonitor = NO_MONITOR, name: str = "norm"):
    """x / sqrt(mean(x²) + eps) over the last dim, for mean squares in
    [norm_range[0], :func:`norm_ceiling`] (up to 2^30/H: 10^6 for H = 1024).

    One opening of x (mpc.opened) serves every step:

    1. the row sums of squares are summed exactly in the ring and truncated exactly
       (mpc.truncation) three times: S_c = 2^-8·Σx² for the largest rows, S = Σx², and
       S' = 2^12·Σx², precise for small ones — 8 bytes per row each, no per-element
       rounding; nothing this large is ever divided (a two-party truncation of it
       would wrap about once per 100 rows);
    2. a power of two s (one batched comparison of H·2^12·(ms + eps) against
       thresholds times H·2^12) puts ms·s² into [1, 16);
    3. ms·s² = (S_c·2^8s² + (S − 2^8·S_c)·s² + (S' − 2^12·S)·s²·2^-12)/H: each later term
       restores the bits the one before lost, and where its factor underflows 16 bits
       (s² < 2^-16 on rows with ms > 2^20; s²·2^-12 on large rows) it is negligible;
    4. Newton's inverse square root on that fixed range gives y, and
       x / sqrt(ms + eps) = x·(s·y): per-row factors times the opened x, with s·y held
       to 32 bits (a large row's s·y is small: 16 bits would lose its precision).
    """
    width = x.size(-1)
    high = norm_ceiling(cfg, width)
    opened = open_once(x)
    coarse, total, total_fine = opened.square_sums((-COARSE_BITS, 0, GAIN_BITS))
    gain = 1 << GAIN_BITS
    # H·2^12·(ms + eps), eps joining before the scale is chosen.  Never divided: the row sums
    # reach 2^58 in the ring, where a division's two-party truncation wraps once per ~100
    # rows; the range check and the comparisons take thresholds times H·2^12 instead.
    fine = total_fine + eps * gain * width
    monitor.check(name, fine, cfg.norm_range[0] * gain * width, high * gain * width)
    # (fine/H)·s_f² in [1, 16) with s_f = s·2^-6: s, s² and s²·2^-12 straight from the comparison bits
    s, s2_coarse, s2, s2_fine = power_of_two_scale(
        fine,
        cfg.norm_range[0] * gain,
        high * gain,
        factors=((1, 2.0 ** (GAIN_BITS // 2)), (2, 2.0 ** (GAIN_BITS + COARSE_BITS)), (2, float(gain)), (2, 1.0)),
        unit=float(width),
    )
    # Σx²·s² from the three sums, each term's factor held where it does not underflow
    # (s² reaches 2^-24, below one 16-bit unit, where ms passes 2^20)
    scaled_sum = coarse * s2_coarse + (total - coarse * (1 << COARSE_BITS)) * s2 + (total_fine - total * gain) * s2_fine
    # eps (~1e-5) is below one fixed-point unit: scale it up, multiply, scale back
    reduced = scaled_sum / width + (s2 * (eps * gain)) * (1.0 / gain)
    return opened.mul_product(s, _rsqrt_reduced(reduced), last=True)


# a reduced value v·s² lies in [1, 16) up to rounding at the level boundaries
START_RANGE = (0.9, 17.0)
START_STEPS = 2  # Newton steps after a start within 1e-3: error ~1e-3 → ~1e-5 → ~1e-10


def _rsqrt_reduced(reduced, fourier_start: bool = True):
    """1/√r for r in REDUCED_RANGE by Newton's y ← y(3 − r·y²)/2.

    Start: a Fourier series of r^-½ on START_RANGE (one masked opening of 4 bytes, one round)
    and two steps; without it (``fourier_start=False``, for CrypTen's autograd) from below
    the root, 11 steps of 3 rounds each.
    """
    if fourier_start:
        y = fourier.evaluate(reduced, fourier.power_series(-0.5, *START_RANGE))
        steps = START_STEPS
    else:
        low, high = REDUCED_RANGE
        y = reduced * 0 + 1.0 / math.sqrt(high)  # below the root on all of [low, high]
        steps = math.ceil(math.log(math.sqrt(high / low), 1.5)) + 5
    for _ in range(steps):
        y = y * (3 - (reduced * y) * y) * 0.5
    return y


def reciprocal_reduced(v):
    """1/v for v in [1, 16) (up to rounding): a Fourier start on START_RANGE, then Newton's
    y ← y(2 − v·y) twice — 5 rounds instead of the 18 of :func:`reciprocal` from 1/16."""
    y = fourier.evaluate(v, fourier.power_series(-1.0, *START_RANGE))
    for _ in range(START_STEPS):
        y = y * (2 - v * y)
    return y


def rsqrt_wide(v, low: float, high: float):
    """1/√v for v in [low, high]: a secret power of two s (v·s² in [1, 16)) times Newton's root
    of v·s².  Only products and comparisons: CrypTen's autograd differentiates it (the
    comparison bits are constants), unlike CrypTen's own inverse square root, which is
    accurate on about [0.1, 300] only.  Used by the training baselines' norms."""
    s, s2 = power_of_two_scale(v.detach(), low, high)  # piecewise constant in v: no gradient
    return _rsqrt_reduced(v * s2, fourier_start=False) * s
