"""Softmax attention for plaintext and secret-shared tensors.

``exact`` (plaintext only) is torch's softmax and reproduces Hugging Face; the
approximate form uses :func:`mpc.approx.softmax`, identical on both backends.
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


def attention(q, k, v, penalty_mask, *, exact: bool, cfg: approx.ApproxConfig, monitor=approx.NO_MONITOR):
    """softmax(q k^T) v for q [.., m, d], k and v [.., n, d]; q is pre-scaled by 1/sqrt(d)."""
    scores = q @ k.transpose(-2, -1)
    if exact:
        weights = exact_softmax(scores, penalty_mask)
    else:
        weights = approx.softmax(scores, penalty_mask, cfg, monitor)
    return weights @ v
