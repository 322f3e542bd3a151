"""Softmax attention for plaintext and secret-shared tensors.

``exact`` (plaintext only) is torch's softmax and reproduces Hugging Face; the
approximate form uses :func:`mpc.approx.softmax`, identical on both backends; the
``native`` form (training baselines) is CrypTen's softmax, which its autograd handles.
Masks are *penalty* masks: 1 where a query may not see a key, 0 elsewhere.
"""

from __future__ import annotations

import torch

from mpc import approx
from mpc.tensorops import is_secure


def exact_softmax(scores: torch.Tensor, penalty_mask) -> torch.Tensor:
    if is_secure(scores):
        raise ValueError("exact softmax is plaintext only; use the approximate form under MPC")
    if penalty_mask is not None:
        scores = scores.masked_fill(penalty_mask > 0.5, float("-inf"))
    return torch.softmax(scores, dim=-1)


def native_softmax(scores, penalty_mask, cfg: approx.ApproxConfig):
    """CrypTen's own softmax (max, exp, reciprocal), which its autograd differentiates;
    torch's on plaintext.  Hidden keys get ``mask_penalty`` subtracted."""
    if penalty_mask is not None:
        scores = scores - penalty_mask * cfg.mask_penalty
    return scores.softmax(-1) if is_secure(scores) else torch.softmax(scores, dim=-1)


def attention(
    q, k, v, penalty_mask, *, exact: bool, cfg: approx.ApproxConfig, monitor=approx.NO_MONITOR, native: bool = False
):
    """softmax(q k^T) v for q [.., m, d], k and v [.., n, d]; q is pre-scaled by 1/sqrt(d)."""
    scores = q @ k.transpose(-2, -1)
    if native:
        weights = native_softmax(scores, penalty_mask, cfg)
    elif exact:
        weights = exact_softmax(scores, penalty_mask)
    else:
        weights = approx.softmax(scores, penalty_mask, cfg, monitor)
    return weights @ v
