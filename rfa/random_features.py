"""Random-feature attention (RFA) for plaintext and secret-shared tensors.

softmax(q kᵀ) v is replaced by  φ(q) (Σ_j φ(k_j) v_jᵀ) / φ(q)·(Σ_j φ(k_j)):
no max, no n² exponentials.  With E[φ(x)·φ(y)] = exp(x·y) (up to a factor that
depends on x alone and cancels in the ratio) this is an unbiased-kernel estimate
of softmax attention.  Two feature maps, both over a matrix W ~ N(0, I) [d, r]
with orthogonal blocks (lower variance than i.i.d. rows):

* ``positive`` (Performer FAVOR+): φ(x) = exp(Wᵀx − |x|²/2 − c) > 0, so the
  denominator can never vanish; costs one exp of n·r values;
* ``fourier`` (Peng et al.): φ(x) = [sin Wᵀx, cos Wᵀx] estimates
  exp(−|x−y|²/2); the key side carries exp(|k|²/2 − c) so the product estimates
  exp(q·k) again.  sin/cos take one round with the dealer (mpc.trig).

Two equivalent evaluation orders:

* ``quadratic``: (φ(q) φ(k)ᵀ ⊙ keep) v — two matrix products; cheapest while the
  number of keys is below r·d (true for every prompt-tuning sequence here);
* ``prefix``: causal prefix sums S_i = Σ_{j≤i} φ(k_j) v_jᵀ — linear in n, for
  long sequences;
* ``linear``: φ(q) (Σ_j φ(k_j) [v_j, 1]ᵀ) for bidirectional attention (padding
  hidden by zeroing those keys' features) — opens n·r + n·d values instead of n².

The usual 1/√r normalisation cancels in the ratio and is left out: features of
order one keep more significant bits in 16-bit fixed point.

q arrives pre-scaled by 1/√d (so logits are q·k); each side gets d^¼ back so
both feature inputs have comparable norms.
"""

from __future__ import annotations

import math

import torch

from mpc import approx
from mpc.opened import open_once
from mpc.tensorops import cat, is_secure
from mpc.trig import sincos_turns, sincos_turns_plain
from rfa.config import AttentionConfig

STABILISER = 0.0  # the constant c above (c > 0 would push small features below fixed-point resolution)


def feature_matrix(head_dim: int, num_features: int, seed: int) -> torch.Tensor:
    """W [d, r]: orthogonal blocks of d columns, each column rescaled to a chi(d) norm."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(num_features / head_dim)):
        gauss = torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(gauss)
        norms = torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64).norm(dim=0)
        blocks.append(q * norms)
    return torch.cat(blocks, dim=1)[:, :num_features].contiguous()


def server_feature_matrices(cfg: AttentionConfig, layers: int, head_dim: int, kv_heads: int = 1) -> dict:
    """The server's random feature matrices ``l{i}.rfa.q`` / ``.k`` [kv_heads, d, r] for
    every RFA layer (the same draw on both sides); in the Fourier map W is expressed
    in turns (divided by 2π) for mpc.trig.  Fitted maps come from :mod:`rfa.fit`."""
    out = {}
    for i in range(layers):
        if cfg.uses_rfa(i):
            w = feature_matrix(head_dim, cfg.num_features, cfg.seed * 1000 + i)
            w = w / (2 * math.pi) if cfg.features == "fourier" else w
            w = w.unsqueeze(0).expand(kv_heads, -1, -1).contiguous()
            out[f"l{i}.rfa.q"] = w
            out[f"l{i}.rfa.k"] = w
    return out


def _balance(q, k, scale: float):
    """Feature inputs x_q = q·d^¼·s, x_k = k·s/d^¼: logits become s²·q·k (s = 1: the
    model's own; another s is a temperature calibration)."""
    root = q.size(-1) ** 0.25
    return q * (root * scale), k * (scale / root)


def _sq_norm(x):
    return x.square().sum(-1, keepdim=True)


def _project(x, params, side: str):
    """x [b, h, n, d] @ W [h, d, r] per head (+ bias [h, 1, r] for fitted maps); x may
    be an :func:`~mpc.opened.open_once` view (then x is not opened again)."""
    y = x.matmul(params[side])
    bias = params.get("b" + side)
    return y if bias is None else y + bias


def positive_features(x, params, side: str, cfg: approx.ApproxConfig, monitor):
    """exp(xW − |x|²/2 − c) (the query side may drop −|x|²/2: it cancels, but
    keeping it bounds the exp argument, which fixed point needs)."""
    opened = open_once(x)  # one opening of x serves the projection and the square
    arg = _project(opened, params, side) - opened.square(last=True).sum(-1, keepdim=True) * 0.5 - STABILISER
    return approx.feature_exp(arg, cfg, monitor)


def fourier_features(x, params, side: str, cfg: approx.ApproxConfig, monitor):
    """[sin xW, cos xW], keys weighted by exp(|k|²/2 − c); W is in turns."""
    u = _project(x, params, side)
    sin, cos = sincos_turns(u) if is_secure(u) else sincos_turns_plain(u)
    feats = cat([sin, cos], dim=-1)
    if side == "q":
        return feats
    arg = _sq_norm(x) * 0.5 - STABILISER
    return feats * approx.feature_exp(arg, cfg, monitor)


def fitted_features(x, params, side: str, cfg: approx.ApproxConfig, monitor):
    """exp(xW + b) with W, b fitted by the server to its own model (rfa.fit)."""
    return approx.feature_exp(_project(x, params, side), cfg, monitor)


FEATURE_MAPS = {"positive": positive_features, "fourier": fourier_features, "fitted": fitted_features}


def quadratic_form(fq, fk, v, keep):
    """(φq φkᵀ ⊙ keep) v and its row sums; ``keep`` is 1 where a query sees a key."""
    a = fq @ fk.transpose(-2, -1)
    if keep is not None:
        a = a * keep
    return a @ v, a.sum(-1, keepdim=True)


def linear_form(fq, fk, v, keep_keys):
    """φq (φkᵀ [v | 1]): numerator and denominator from two products, linear in the
    number of keys (bidirectional attention; ``keep_keys`` [.., n, 1] hides padding)."""
    if keep_keys is not None:
        fk = fk * keep_keys
    ones = v.narrow(-1, 0, 1) * 0 + 1
    out = fq @ (fk.transpose(-2, -1) @ cat([v, ones], dim=-1))
    d = v.size(-1)
    return out.narrow(-1, 0, d), out.narrow(-1, d, 1)


def prefix_form(fq, fk, v, rep: int, offset: int):
    """Causal prefix sums: query i (of n, repeated ``rep`` times along the query
    axis for grouped heads) sees keys 0 .. offset + i."""
    b, h, m, r = fq.size(0), fq.size(1), fq.size(2), fq.size(3)
    n, d = m // rep, v.size(-1)
    kv = (fk.unsqueeze(-1) * v.unsqueeze(-2)).cumsum(2)  # [b, h, offset+n, r, d]
    z = fk.cumsum(2)  # [b, h, offset+n, r]
    kv, z = kv.narrow(2, offset, n), z.narrow(2, offset, n)
    fq = fq.reshape(b, h, rep, n, r)
    num = (fq.unsqueeze(-1) * kv.unsqueeze(2)).sum(-2)  # [b, h, rep, n, d]
    den = (fq * z.unsqueeze(2)).sum(-1, keepdim=True)
    return num.reshape(b, h, m, d), den.reshape(b, h, m, 1)


def rfa_attention(
    q,
    k,
    v,
    params: dict,
    penalty,
    cfg: AttentionConfig,
    acfg: approx.ApproxConfig,
    monitor=approx.NO_MONITOR,
    *,
    form: str = "quadratic",
    rep: int = 1,
    offset: int = 0,
):
    """RFA output for q [b, h, m, d] (pre-scaled by 1/√d), k, v [b, h, n, d].

    ``params``: this layer's feature matrices {"q", "k": [h, d, r]} (+ "bq", "bk").

    ``penalty`` is the softmax path's penalty mask (1 where a query must not see a
    key: public causal mask or the owner's secret padding mask).  ``form="prefix"``
    is for causal masks only (``rep`` query groups, ``offset`` prefix keys);
    ``form="linear"`` for per-key masks ([.., 1, n]: padding) or none.
    """
    xq, xk = _balance(q, k, cfg.scale)
    feature = FEATURE_MAPS[cfg.features]
    fq = feature(xq, params, "q", acfg, monitor)
    fk = feature(xk, params, "k", acfg, monitor)
    if form == "prefix":
        num, den = prefix_form(fq, fk, v, rep, offset)
    elif form == "linear":
        keep_keys = None if penalty is None else (1 - penalty).transpose(-2, -1)
        num, den = linear_form(fq, fk, v, keep_keys)
    else:
        keep = None if penalty is None else 1 - penalty
        num, den = quadratic_form(fq, fk, v, keep)
    monitor.check("rfa_denominator", den, acfg.rfa_den_range[0], acfg.rfa_den_range[1])
    return approx.divide_wide(num, den, *acfg.rfa_den_range)
