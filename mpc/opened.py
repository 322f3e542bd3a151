"""One opening of a secret, many products with it.

A Beaver product x·y opens both x − A and y − B.  When the same x meets several
other factors (a norm multiplies a row by its scale factors, and squares it), x
needs opening only once: the dealer draws the mask A, keeps it, and for each later
product hands out shares of A·B (and of A² for x·x).  With E = x − A public and
D = y − B opened per product:

    x·y = E·D + E·B + A·D + A·B,        x·x = E² + 2·E·A + A².

and likewise x @ W = E·D + E·B + A·D + A·B with matrix products.  So a product
of a [rows, H] tensor with a per-row factor moves only the factor (rows values),
x² moves nothing, and x @ W moves only W.  Security is Beaver's: A is uniform and used
for one opening; each B is fresh; A·B and A² arrive as shares; the dealer sees
handles and shapes only.  The dealer forgets A on the product marked ``last``.
"""

from __future__ import annotations

import itertools

import torch

from mpc.dealer import dealer_function, party_draw, release_hook, release_later, request
from mpc.ring import ring_matmul
from mpc.tensorops import PRECISION_BITS, from_product_shares, is_secure, open_shares, party_rank
from mpc.truncation import BOUND_BITS, truncate_shares

_DEALER_MASKS: dict[int, torch.Tensor] = {}  # dealer process: handle -> A
_HANDLES = itertools.count()


def held_mask(handle: int, last: bool) -> torch.Tensor:
    """Dealer side: the mask A held under ``handle`` (forgotten if ``last``)."""
    mask = _DEALER_MASKS.pop(handle, None) if last else _DEALER_MASKS.get(handle)
    if mask is None:
        raise RuntimeError(f"dealer: no held mask under handle {handle}")
    return mask


@release_hook
def _release(handles) -> None:
    for handle in handles:
        _DEALER_MASKS.pop(handle, None)


@dealer_function("hold_mask", shape_args=(1,))
def _deal_hold(server, size, handle, shape):
    _DEALER_MASKS[handle] = server.prss(torch.Size(shape))
    return torch.zeros(size, dtype=torch.long)  # nothing to send: no draw from the server's stream


@dealer_function("held_product", shape_args=(1,))
def _deal_held_product(server, size, handle, b_shape, last):
    c = held_mask(handle, last) * server.prss(torch.Size(b_shape))
    return c - server.prss_server(c.size())


@dealer_function("held_matmul", shape_args=(1,))
def _deal_held_matmul(server, size, handle, b_shape, last):
    c = ring_matmul(held_mask(handle, last), server.prss(torch.Size(b_shape)))
    return c - server.prss_server(c.size())


@dealer_function("held_square")
def _deal_held_square(server, size, handle, last):
    mask = held_mask(handle, last)
    return mask * mask - server.prss_server(mask.size())


class Opened:
    """A secret MPCTensor x, opened once; :meth:`mul` and :meth:`square` reuse that opening."""

    def __init__(self, x):
        if x.encoder.scale != 2**PRECISION_BITS:
            raise ValueError(f"needs {PRECISION_BITS}-bit fixed point, got scale {x.encoder.scale}")
        self.shape = tuple(x.share.shape)
        self.handle = next(_HANDLES)
        self.a = party_draw(self.shape)
        request("hold_mask", (0,), self.handle, self.shape)
        (self.e,) = open_shares([x.share - self.a])

    def release(self) -> None:
        """No more products with x: the dealer may forget A (told with its next request)."""
        release_later(self.handle)

    def mul(self, y, last: bool = False):
        """x·y for a secret y that broadcasts to x's shape (opens y's size only)."""
        return from_product_shares(self._product_shares(y, last))

    def _product_shares(self, y, last: bool) -> torch.Tensor:
        """This party's int64 shares of x·y at scale 2^32 (not yet truncated)."""
        y_shape = tuple(y.share.shape)
        if torch.broadcast_shapes(self.shape, y_shape) != torch.Size(self.shape):
            raise ValueError(f"factor of shape {y_shape} does not broadcast to {self.shape}")
        b = party_draw(y_shape)
        c = request("held_product", self.shape, self.handle, y_shape, last)
        (d,) = open_shares([y.share - b])
        z = self.e * b + self.a * d + c
        if party_rank() == 0:
            z += self.e * d
        return z

    def mul_product(self, s, y, last: bool = False):
        """x·(s·y) for small secrets s, y (per row, say) with s·y kept to 32 fractional bits.

        A small s·y held to 16 bits would lose relative precision (2^-16/(s·y)); instead its
        exact product is split by exact truncations (mpc.truncation, one round for both) into
        a 16-bit high part and two 8-bit limbs of the remainder: x·high + 2^-8·x·mid +
        2^-16·x·low needs no opening of x.  Limbs of 8 bits keep each product's ring value
        below |x|·2^25, so CrypTen's local truncation of it wraps with probability ~|x|·2^-39:
        with one 16-bit remainder (ring values up to |x|·2^32) a massive activation
        (|x| ~ 3·10^4, SmolLM2) came out 65,536 off about once in 10^5 elements.
        """
        from crypten.mpc import MPCTensor

        both = Opened(s)._product_shares(y, last=True)  # s·y at scale 2^32, exact
        high, coarse = truncate_shares(torch.stack([both, both]), (PRECISION_BITS, PRECISION_BITS // 2))
        mid = coarse - (high << (PRECISION_BITS // 2))  # bits 8..15 of the remainder (± one unit)
        low = both - (coarse << (PRECISION_BITS // 2))  # bits 0..7
        out = self.mul(MPCTensor.from_shares(high, precision=PRECISION_BITS))
        for limb, shift, final in ((mid, 3 * PRECISION_BITS // 2, False), (low, 2 * PRECISION_BITS, last)):
            factor = MPCTensor.from_shares(limb, precision=PRECISION_BITS)
            part = MPCTensor.from_shares(self._product_shares(factor, final), precision=PRECISION_BITS)
            part._tensor.div_(2**shift)
            out = out + part
        return out

    def __matmul__(self, w):
        return self.matmul(w) if hasattr(w, "share") else NotImplemented  # other weights serve themselves

    def matmul(self, w, last: bool = False):
        """x @ w for a secret matrix w (opens w's size only)."""
        w_shape = tuple(w.share.shape)
        out_shape = tuple(torch.matmul(torch.empty(self.shape, device="meta"), torch.empty(w_shape, device="meta")).shape)
        b = party_draw(w_shape)
        c = request("held_matmul", out_shape, self.handle, w_shape, last)
        (d,) = open_shares([w.share - b])
        z = ring_matmul(self.e, b) + ring_matmul(self.a, d) + c
        if party_rank() == 0:
            z += ring_matmul(self.e, d)
        return from_product_shares(z)

    def square(self, last: bool = False):
        """x·x: no opening at all."""
        return from_product_shares(self._square_shares(last))

    def _square_shares(self, last: bool) -> torch.Tensor:
        """This party's int64 shares of x² at scale 2^32 (not yet truncated)."""
        c = request("held_square", self.shape, self.handle, last)
        z = 2 * self.e * self.a + c
        if party_rank() == 0:
            z += self.e * self.e
        return z

    def square_sums(self, gains: tuple[int, ...] = (0,), last: bool = False) -> list:
        """Σ x² over the last dim times 2^g for each gain g, from the exact ring sum of the
        squares truncated exactly (mpc.truncation): no per-element rounding, no truncation
        failure; needs Σ x² < 2^30 (and 2^(30 − g) for a positive gain).  Moves 8 bytes per
        row and gain."""
        from crypten.mpc import MPCTensor

        if any(not PRECISION_BITS - BOUND_BITS <= g < PRECISION_BITS for g in gains):
            raise ValueError(f"gains {gains} outside [{PRECISION_BITS - BOUND_BITS}, {PRECISION_BITS})")
        sums = self._square_shares(last).sum(-1, keepdim=True)
        exact = truncate_shares(torch.stack([sums] * len(gains)), tuple(PRECISION_BITS - g for g in gains))
        return [MPCTensor.from_shares(t, precision=PRECISION_BITS) for t in exact]


class Unopened:
    """Plaintext stand-in with the same interface (the oracle computes the same products)."""

    def __init__(self, x):
        self.x = x

    def release(self) -> None:
        pass

    def mul(self, y, last: bool = False):
        return self.x * y

    def mul_product(self, s, y, last: bool = False):
        return self.x * (s * y)

    def matmul(self, w, last: bool = False):
        return self.x @ w

    def __matmul__(self, w):
        return self.x @ w

    def square(self, last: bool = False):
        return self.x.square()

    def square_sums(self, gains: tuple[int, ...] = (0,), last: bool = False) -> list:
        total = self.x.square().sum(-1, keepdim=True)
        return [total * 2.0**g for g in gains]


def open_once(x):
    """:class:`Opened` for a secret x; on plaintext, direct products."""
    return Opened(x) if is_secure(x) else Unopened(x)
