"""Exact truncation of bounded secrets: one masked opening, no failure probability.

CrypTen's two-party truncation divides each share locally; it is off by 2^(64-k)
whenever the two shares wrap, which happens with probability ~|z|·2^-64 — fine
for small values, not for the per-row sums of squares a norm needs (up to 2^62
in the ring).  With the dealer's help a value known to lie in [−2^62, 2^62) is
truncated exactly (up to one unit of rounding):

* offline, the parties hold shares of a PRSS mask R (uniform in Z_2^64) and the
  dealer sends shares of ⌊R/2^k⌋ and msb(R)·2^(64−k) (R read as unsigned);
* online, the parties open C = Z + 2^62 + R (one round, 8 bytes per value).
  C is uniform whatever Z is.  With Z' = Z + 2^62 in [0, 2^63), the sum Z' + R
  wraps past 2^64 exactly when msb(R) = 1 and msb(C) = 0, so

      ⌊Z'/2^k⌋ = ⌊C/2^k⌋ − ⌊R/2^k⌋ + msb(R)·(1 − msb(C))·2^(64−k) − b,   b ∈ {0, 1}

  (b, the borrow from the low bits, is left out: the result is one unit high at most),

  public values and dealer shares combined locally.

Security: C is a one-time pad of Z; the dealer sees the shape and k only.
"""

from __future__ import annotations

import torch

from mpc.dealer import dealer_function, party_draw, request
from mpc.tensorops import open_shares, party_rank

BOUND_BITS = 62  # |Z| < 2^62


def _unsigned_shift(x: torch.Tensor, k) -> torch.Tensor:
    """⌊x/2^k⌋ for int64 ring elements read as unsigned 64-bit integers (k ≥ 1: int or tensor)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _msb(x: torch.Tensor) -> torch.Tensor:
    return (x < 0).long()


@dealer_function("truncation_pair")
def _deal_pair(server, size, shifts):
    """Owner's shares of [⌊R/2^k⌋, msb(R)·2^(64−k)] for the parties' next PRSS draw R
    [len(shifts), ...], slot i truncated by 2^shifts[i]."""
    r = server.prss(torch.Size(size[1:]))
    k = torch.tensor(shifts, dtype=torch.long).view(-1, *([1] * (r.dim() - 1)))
    pair = torch.stack([_unsigned_shift(r, k), _msb(r) << (64 - k)])
    return pair - server.prss_server(torch.Size(size))


def truncate_shares(z: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """This party's int64 shares of ⌊Z_i/2^shifts[i]⌋ (+1 unit at most) for shares ``z``
    [len(shifts), ...] of ring values with |Z| < 2^62; one round for all slots.  Both
    parties call it in the same order."""
    shifts = tuple(int(k) for k in shifts)
    if any(not 1 <= k <= BOUND_BITS for k in shifts):
        raise ValueError(f"truncation by 2^{shifts}: every shift must be in 1..{BOUND_BITS}")
    if z.dim() < 1 or z.size(0) != len(shifts):
        raise ValueError(f"shares of shape {tuple(z.shape)} do not match {len(shifts)} shifts")
    k = torch.tensor(shifts, dtype=torch.long).view(-1, *([1] * (z.dim() - 1)))
    r = party_draw(z.shape)
    pair = request("truncation_pair", (2, *z.shape), shifts)
    offset = 1 << BOUND_BITS
    first = party_rank() == 0
    (c,) = open_shares([z + r + (offset if first else 0)])
    out = (1 - _msb(c)) * pair[1] - pair[0]
    if first:
        out += _unsigned_shift(c, k) - (offset >> k)
    return out
