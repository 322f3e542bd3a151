"""Fit RFA feature maps to a pretrained model's own attention (server side, once).

Random features estimate exp(q·k) without bias, but with a variance that grows
with |q|, |k|; a pretrained model's queries and keys are large (logits up to ~20
in SmolLM2), so drop-in random features give attention outputs with ~100%
relative error.  Instead the server learns, per layer and key/value head, maps
φ(x) = exp(xW + b) (W [d, r], separate for queries and keys) so that
φ(q)φ(k)ᵀ, normalised, matches the softmax attention weights of its own model
on public text (attention distillation, as in Hedgehog, Zhang et al. 2024).

The fit evaluates exp as the secure run's approximation defines it (the saturating exp
its Fourier series stands for, in closed form: see :func:`saturating_exp`) and penalises
exponent arguments outside [exp_low, rfa_exp_high] (the knee above which the secure
exp levels off; narrower than the secure run's exp range: below e^-16 a feature is 0
in fixed point anyway) and denominators near the edges of their range, so what is fitted is what runs
under MPC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from mpc import approx
from rfa.random_features import feature_matrix, rfa_attention
from rfa.softmax_attention import attention


@dataclass(frozen=True)
class FitOptions:
    """``exp_low``: the fit keeps exponent arguments above ``exp_low + range_margin``.
    A feature below e^-16 is 0 in 16-bit fixed point, so the fit has no reason to go
    lower; the secure exp covers a much wider range (``ApproxConfig.rfa_exp_low``) so
    that task text, which the fit never saw, cannot wrap round the periodic series.

    ``sequences``: each step sees this many sequences of every captured batch (the next ones
    each step, in turn), not all 16: the fit's cost is element-wise work on the [b, h, m, n]
    attention weights, so a step costs ~a quarter, and 200 steps still see every
    sequence 50 times (SmolLM2: the RFA layers chosen and their KL in BENCHMARKS.md)."""

    steps: int = 200
    sequences: int = 4  # per captured batch and step, cycling through the batch (0: all of it)
    lr: float = 0.02
    range_weight: float = 4.0
    range_margin: float = 1.0  # keep exponent arguments this far inside the fit's range
    exp_low: float = -16.0


def saturating_exp(arg: torch.Tensor, acfg: approx.ApproxConfig) -> torch.Tensor:
    """The RFA feature exp as the plaintext oracle computes it (``approx.feature_exp``: the
    function e^a / (1 + e^(a − knee)) that the secure run's Fourier series stands for, on
    [rfa_exp_low, rfa_exp_reach]), clamped to that range, in closed form.

    Why not ``approx.feature_exp`` itself: outside its range it evaluates the periodic series
    (84 harmonics per element) and a table of its values costs a gather per element (a quarter
    of the fit's time on SmolLM2); one exp and one softplus take 0.7x the table's time.
    Inside the range it equals the oracle to rounding (tests/test_rfa.py), so what is fitted is
    what runs under MPC, to the series' tolerance."""
    a = arg.clamp(min=float(acfg.rfa_exp_low), max=float(acfg.rfa_exp_reach))
    return torch.exp(a - torch.nn.functional.softplus(a - acfg.rfa_exp_high))


def _features(x, w, b, acfg: approx.ApproxConfig):
    arg = x @ w + b
    return saturating_exp(arg, acfg), arg


def _outside(x, low: float, high: float):
    return torch.relu(x - high).square().mean() + torch.relu(low - x).square().mean()


def _part(t: torch.Tensor, step: int, size: int) -> torch.Tensor:
    """Step ``step``'s ``size`` sequences of a batch (dim 0), cycling through it; all of a smaller one."""
    if not size or t.size(0) <= size:
        return t
    return t.index_select(0, (torch.arange(size) + step * size) % t.size(0))


def _targets(samples: list[dict], root: float) -> list[tuple]:
    """Per sample: balanced q, k, the key mask (1 = visible) and softmax's attention weights."""
    data = []
    for s in samples:
        q, k = (s["q"] * root).float(), (s["k"] / root).float()
        logits = q @ k.transpose(-2, -1)
        keep = torch.ones_like(logits) if s["penalty"] is None else (1 - s["penalty"].float()).expand_as(logits)
        target = torch.softmax(logits.masked_fill(keep < 0.5, float("-inf")), dim=-1)
        data.append((q, k, keep, target))
    return data


def fit_layer(samples: list[dict], num_features: int, seed: int, acfg: approx.ApproxConfig, opts: FitOptions) -> dict:
    """Feature maps {"q","k": [h, d, r], "bq","bk": [h, 1, r]} for one layer.

    ``samples``: the layer's captured attention inputs, each with q [b, h, m, d]
    (pre-scaled), k, v [b, h, n, d] and a penalty mask (1 = hidden) broadcastable
    to [b, h, m, n].  Keys and queries are balanced by d^¼ as in rfa_attention.
    The loss is the cross-entropy to softmax's weights, averaged over all query rows
    (a batch of 16 sequences counts 16 times one), plus a penalty on exponent
    arguments and denominators near the edges of the fit's ranges (``opts``): outside
    the secure run's range the exp is a periodic series, i.e. wrong.
    """
    acfg = replace(acfg, rfa_exp_low=opts.exp_low)
    heads, d = samples[0]["q"].size(1), samples[0]["q"].size(-1)
    root = d**0.25
    data = _targets(samples, root)
    rows = sum(_part(t, 0, opts.sequences).numel() // t.size(-1) for *_, t in data)
    init = feature_matrix(d, num_features, seed).float() / root
    params = {
        "q": init.unsqueeze(0).repeat(heads, 1, 1).requires_grad_(),
        "k": init.unsqueeze(0).repeat(heads, 1, 1).requires_grad_(),
        "bq": torch.full((heads, 1, num_features), -1.0).requires_grad_(),
        "bk": torch.full((heads, 1, num_features), -1.0).requires_grad_(),
    }
    optimiser = torch.optim.Adam(params.values(), lr=opts.lr)
    log_lo, log_hi = (math.log(v) for v in acfg.rfa_den_range)
    lo, hi = acfg.rfa_exp_low + opts.range_margin, acfg.rfa_exp_high - opts.range_margin
    for step in range(opts.steps):
        optimiser.zero_grad()
        for sample in data:  # one backward per sample: the graph of one at a time
            q, k, keep, target = (_part(t, step, opts.sequences) for t in sample)
            fq, aq = _features(q, params["q"], params["bq"], acfg)
            fk, ak = _features(k, params["k"], params["bk"], acfg)
            scores = (fq @ fk.transpose(-2, -1)) * keep
            den = scores.sum(-1, keepdim=True)
            share = target.numel() // target.size(-1) / rows
            loss = -(target * torch.log(scores / den + 1e-9)).sum() / rows
            ranges = _outside(aq, lo, hi) + _outside(ak, lo, hi) + _outside(torch.log(den), log_lo + 2, log_hi - 2)
            (loss + opts.range_weight * share * ranges).backward()
        optimiser.step()
    return {name: p.detach().double() for name, p in params.items()}


def attention_error(samples: list[dict], layer_params: dict, acfg: approx.ApproxConfig, cfg) -> float:
    """Relative error ||RFA − softmax|| / ||softmax|| of this layer's attention outputs."""
    num = den = 0.0
    for s in samples:
        exact = attention(s["q"], s["k"], s["v"], s["penalty"], exact=True, cfg=acfg)
        approx_out = rfa_attention(s["q"], s["k"], s["v"], layer_params, s["penalty"], cfg, acfg)
        num += float((approx_out - exact).square().sum())
        den += float(exact.square().sum())
    return math.sqrt(num / den)
