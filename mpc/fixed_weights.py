"""Beaver products ``X·W`` with one fixed mask per weight matrix.

The server's weights do not change during a session, so the weight half of a
Beaver triple need not be fresh for every product.  Per weight matrix ``W``
(shared by the server, ``[k, m]``):

* once per session — both parties draw shares of a mask ``B`` from the
  generators they share with the dealer (PRSS, no traffic), the dealer draws the
  same ``B`` in plaintext and keeps it in memory under a *handle*; the parties
  open ``F = W − B`` (one round, weight-sized, for all weights at once);
* for every product ``X·W`` — both parties draw shares of a fresh ``A`` (PRSS,
  shape of ``X``), the dealer sends the data owner its share of ``C = A·B``
  (the server's share comes from its generator), and only ``E = X − A`` is
  opened (one round, *activation-sized*).  Then

      X·W = E·F + E·B + A·F + A·B = E·F + E·B + A·F + C,

  with ``E``, ``F`` public to both parties and ``B``, ``A``, ``C`` shared.  Party
  0 computes ``E·(F + B0) + A0·F + C0``, party 1 ``E·B1 + A1·F + C1``: two local
  ring products each, followed by CrypTen's usual two-party truncation.

Per forward pass only activation-sized data crosses between the parties for the
linear layers; CrypTen's Beaver product opens ``W − B'`` with a fresh ``B'`` every
time.  Security (semi-honest, dealer non-colluding; see docs/protocol.md): ``B`` is
uniform over Z_2^64 and used for one ``W`` only, so ``F`` is a one-time pad of
``W``; each ``A`` is fresh and uniform, so every ``E`` is a one-time pad of its
``X``; ``C`` arrives as shares.  The dealer sees handles and shapes only.

Products that share their input (q/k/v, gate/up) are *fused*: their weights are
concatenated into one ``[k, m1 + m2 + ...]`` matrix with one mask, so ``X`` is
opened once for all of them (:class:`FixedGroup`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch

from mpc.accounting import section
from mpc.dealer import dealer_function, party_draw, request
from mpc.ring import ring_matmul
from mpc.opened import Opened, held_mask
from mpc.tensorops import PRECISION_BITS, from_product_shares, open_shares, party_rank

# dealer process only: handle -> the plaintext mask B (int64 ring elements)
_DEALER_MASKS: dict[int, torch.Tensor] = {}
# computing parties: both draw handles in the same order (SPMD), so they agree
_HANDLES = itertools.count()


@dealer_function("fixed_masks", shape_args=(1,))
def _deal_masks(server, size, handles, shapes):
    """Remember B = the parties' next PRSS draw for each handle; the reply is empty."""
    for handle, shape in zip(handles, shapes):
        _DEALER_MASKS[handle] = server.prss(torch.Size(shape))
    return torch.zeros(size, dtype=torch.long)


@dealer_function("held_fixed_product")
def _deal_held_product(server, size, opened_handle, handle):
    """The owner's share of C = A·B for the mask A held under ``opened_handle`` (mpc.opened):
    an input opened once for other products meets a fixed-mask weight at no opening."""
    c = ring_matmul(held_mask(opened_handle, False), _fixed_mask(handle))
    if tuple(c.shape) != tuple(size):
        raise RuntimeError(f"dealer: fixed-mask product has shape {tuple(c.shape)}, request said {tuple(size)}")
    return c - server.prss_server(c.size())


def _fixed_mask(handle: int) -> torch.Tensor:
    mask = _DEALER_MASKS.get(handle)
    if mask is None:
        raise RuntimeError(f"dealer: no fixed weight mask under handle {handle} (masks were never prepared)")
    return mask


@dealer_function("fixed_product", shape_args=(1,))
def _deal_product(server, size, handle, a_shape):
    """The owner's share of C = A·B, A = the parties' next PRSS draw of ``a_shape``."""
    a = server.prss(torch.Size(a_shape))
    c = ring_matmul(a, _fixed_mask(handle))
    if tuple(c.shape) != tuple(size):
        raise RuntimeError(f"dealer: fixed-mask product has shape {tuple(c.shape)}, request said {tuple(size)}")
    return c - server.prss_server(c.size())


class FixedGroup:
    """One masked weight matrix ``W = [W1 | W2 | ...]`` (this party's view).

    ``public`` is F = W − B, ``local`` this party's operand for E: F + B0 (party
    0) or B1 (party 1).  The shares of W and B are not kept.
    """

    def __init__(self, handle: int, names: list[str], widths: list[int], public: torch.Tensor, local: torch.Tensor):
        self.handle = handle
        self.names = names
        self.widths = widths
        self.offsets = [sum(widths[:i]) for i in range(len(widths))]
        self.public = public
        self.local = local
        self._cache = None  # ((x, its share, share version), result, members not yet served)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.public.shape)

    def product(self, x):
        """X·W for a secret MPCTensor ``x`` [..., k]: one opening of x's size, one round;
        for an :class:`~mpc.opened.Opened` x (already opened for other products), none."""
        if isinstance(x, Opened):
            self._check_width(x.shape)
            out_shape = (*x.shape[:-1], self.public.shape[1])
            c = request("held_fixed_product", out_shape, x.handle, self.handle)
            return self._combine(x.e, x.a, c)
        from crypten.mpc import MPCTensor
        from crypten.mpc.ptype import ptype as Ptype

        if not isinstance(x, MPCTensor) or x.ptype != Ptype.arithmetic:
            raise TypeError(f"a fixed-mask weight multiplies arithmetic MPCTensors, not {type(x).__name__}")
        if x.encoder.scale != 2**PRECISION_BITS:
            raise ValueError(f"fixed-mask product needs {PRECISION_BITS}-bit inputs, got scale {x.encoder.scale}")
        x_share = x.share
        self._check_width(tuple(x_share.shape))
        a = party_draw(x_share.shape)
        out_shape = (*x_share.shape[:-1], self.public.shape[1])
        c = request("fixed_product", out_shape, self.handle, tuple(x_share.shape))
        (e,) = open_shares([x_share - a])
        return self._combine(e, a, c)

    def _check_width(self, shape: tuple) -> None:
        k = self.public.shape[0]
        if len(shape) < 1 or shape[-1] != k:
            raise ValueError(f"cannot multiply an input of shape {tuple(shape)} by a [{k}, {self.public.shape[1]}] weight")

    def _combine(self, e, a, c):
        """This party's E·(F + B0) + A0·F + C0 (party 0) or E·B1 + A1·F + C1 (party 1)."""
        z = ring_matmul(e, self.local)
        z += ring_matmul(a, self.public)
        z += c
        return from_product_shares(z)

    def member_product(self, x, index: int):
        """Columns of member ``index`` of X·W; members called in turn on the same
        ``x`` (same object, unmodified) share one product and one opening."""
        if len(self.names) == 1:
            return self.product(x)
        cached = self._cache
        # the same input: same object, same share tensor, no in-place change since (version)
        share = None if isinstance(x, Opened) else x.share
        key = (x, share, getattr(share, "_version", None))
        same = cached is not None and cached[0][0] is x and cached[0][1] is key[1] and cached[0][2] == key[2]
        if not same or index not in cached[2]:
            cached = (key, self.product(x), set(range(len(self.names))))
        cached[2].discard(index)
        self._cache = cached if cached[2] else None
        return cached[1].narrow(-1, self.offsets[index], self.widths[index])


class FixedWeight:
    """Stands in for a shared weight matrix in the model's weights dict: the
    ``index``-th member of a :class:`FixedGroup`."""

    def __init__(self, group: FixedGroup, index: int):
        self.group = group
        self.index = index

    @property
    def name(self) -> str:
        return self.group.names[self.index]

    def size(self, dim: int | None = None):
        shape = torch.Size((self.group.public.shape[0], self.group.widths[self.index]))
        return shape if dim is None else shape[dim]

    serves_products = True  # mpc.tensorops.matmul hands it x, whatever x's type

    def apply(self, x):
        """x @ W (secret x, secret W) with this weight's fixed mask."""
        return self.group.member_product(x, self.index)

    def __rmatmul__(self, x):
        return self.apply(x)

    def __repr__(self) -> str:
        return f"FixedWeight({self.name!r}, shape={tuple(self.size())}, handle={self.group.handle})"


def linear_groups(weights: dict, fuse: Iterable[Iterable[str]] = ()) -> list[list[str]]:
    """The weight keys to mask, grouped.

    Linear weights are the 2-D ``*.w`` entries (norm scales ``*.w`` are 1-D).  For
    each tuple of short names in ``fuse`` (e.g. ``("q", "k", "v")``), the weights
    ``{prefix}.q.w``, ``{prefix}.k.w``, ``{prefix}.v.w`` with a common prefix and
    the same input width form one group, in that order; the model must apply them
    to the same input.  Every other linear weight is a group of its own.
    """
    linear = [n for n in weights if n.endswith(".w") and weights[n].dim() == 2]
    available = set(linear)
    groups: list[list[str]] = []
    for shorts in fuse:
        shorts = tuple(shorts)
        for name in linear:
            prefix, dot, short = name[: -len(".w")].rpartition(".")
            if short != shorts[0]:
                continue
            members = [f"{prefix}{dot}{s}.w" for s in shorts]
            if all(m in available for m in members) and len({weights[m].size(0) for m in members}) == 1:
                groups.append(members)
                available.difference_update(members)
    groups.extend([n] for n in linear if n in available)
    return groups


def prepare(weights: dict, fuse: Iterable[Iterable[str]] = ()) -> dict:
    """Mask every linear weight of a secret-shared ``weights`` dict once for the session.

    Returns a new dict in which each linear weight ``*.w`` is a :class:`FixedWeight`
    (everything else unchanged).  Both parties call it in the same order; costs one
    dealer request and one opening of all the weights (one round).
    """
    groups = linear_groups(weights, fuse)
    if not groups:
        return dict(weights)
    for group in groups:
        for name in group:
            scale = weights[name].encoder.scale
            if scale != 2**PRECISION_BITS:
                raise ValueError(f"weight {name!r} has fixed-point scale {scale}; expected 2^{PRECISION_BITS}")
    with section("linear_setup"):
        shares = [torch.cat([weights[n].share for n in g], dim=1) if len(g) > 1 else weights[g[0]].share for g in groups]
        masks = [party_draw(s.shape) for s in shares]
        handles = [next(_HANDLES) for _ in groups]
        request("fixed_masks", (0,), handles, [tuple(s.shape) for s in shares])
        opened = open_shares([s - b for s, b in zip(shares, masks)])
    out = dict(weights)
    rank = party_rank()
    for group, handle, public, mask in zip(groups, handles, opened, masks):
        local = public + mask if rank == 0 else mask
        widths = [weights[n].size(1) for n in group]
        fixed = FixedGroup(handle, list(group), widths, public, local)
        for i, name in enumerate(group):
            out[name] = FixedWeight(fixed, i)
    return out
