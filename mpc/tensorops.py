"""The few tensor operations whose spelling differs between torch and CrypTen.

Model code is written once against these plus the operators both tensor kinds
share (+, -, *, @, sum, reshape, transpose, ...), so the same code runs on
float64 torch tensors (the plaintext oracle) and on secret-shared MPCTensors.
"""

from __future__ import annotations

import torch


def is_secure(x) -> bool:
    """True for CrypTen tensors (secret-shared), False for torch tensors."""
    return not torch.is_tensor(x)


def within(x: torch.Tensor, low: float, high: float) -> bool:
    """Whether every element of a plaintext x lies in [low, high]: one min/max pass, so a
    range check builds its (several-pass) out-of-range mask only when something is out."""
    if x.numel() == 0:
        return True
    smallest, largest = x.aminmax()
    return bool(smallest >= low and largest <= high)


def cat(tensors, dim: int = 0):
    if is_secure(tensors[0]):
        import crypten

        return crypten.cat(list(tensors), dim=dim)
    return torch.cat(list(tensors), dim=dim)


def public_like(t: torch.Tensor, x):
    """A public constant tensor ``t`` (made in float64) in the working precision of ``x``.

    Plaintext sessions run in float64 (the oracle) or float32 (the fast check of the same
    approximations, secptune.plain): a float64 constant would promote a float32 computation
    back to float64 (torch promotes across dimensioned tensors), doubling its cost and
    hiding what float32 alone gives.  Secret x keeps t as is: CrypTen encodes public
    operands in fixed point itself.
    """
    if is_secure(x) or not t.is_floating_point():
        return t
    return t.to(x.dtype)


def pad(x, widths: tuple[int, ...]):
    """Zero padding with torch.nn.functional.pad's ``widths`` convention (last dim first)."""
    if is_secure(x):
        return x.pad(widths)
    return torch.nn.functional.pad(x, widths)


def gt_zero(x):
    """1 where x > 0 else 0, in x's own numeric kind (exact comparison in both).

    CrypTen returns comparison bits with scale 1 (unscaled integers); a product of
    such a tensor with a public float would then be rounded to an integer, so the
    bits are re-encoded at the standard fixed-point scale (a local shift).
    """
    if is_secure(x):
        from crypten.encoder import FixedPointEncoder

        bits = x > 0
        bits._tensor.encode_(FixedPointEncoder())
        return bits
    return (x > 0).to(x.dtype)


def pairwise_max(a, b):
    """Elementwise max(a, b) = b + (a - b)[a > b]: one comparison and one product."""
    d = a - b
    return b + d * gt_zero(d)


def max_along(x, dim: int = -1):
    """Maximum along ``dim`` (kept as size 1) by a balanced tree of pairwise maxima.

    log2(n) comparison rounds instead of n - 1; identical algorithm on both backends,
    so the plaintext oracle reproduces the secure result up to fixed-point error.
    """
    dim = dim % x.dim()
    while x.size(dim) > 1:
        n = x.size(dim)
        half = n // 2
        low = x.narrow(dim, 0, half)
        high = x.narrow(dim, half, half)
        merged = pairwise_max(low, high)
        if n % 2:
            merged = cat([merged, x.narrow(dim, n - 1, 1)], dim=dim)
        x = merged
    return x


def matmul(x, w):
    """x @ w for any operands of a forward pass: plaintext tensors, MPCTensors, an input opened
    once (mpc.opened) and a fixed-mask weight (mpc.fixed_weights).  A weight type that serves
    its own products (``serves_products``, e.g. FixedWeight) is asked first: CrypTen's
    MPCTensor refuses an unknown right operand instead of deferring to it."""
    if getattr(type(w), "serves_products", False):
        return w.__rmatmul__(x)
    return x @ w


PRECISION_BITS = 16  # CrypTen's fixed-point precision


def from_product_shares(z: torch.Tensor):
    """This party's int64 shares of a product of two 16-bit encodings (scale 2^32) as an
    MPCTensor, after CrypTen's usual two-party truncation back to 2^16."""
    from crypten.mpc import MPCTensor

    out = MPCTensor.from_shares(z, precision=PRECISION_BITS)
    out._tensor.div_(2**PRECISION_BITS)
    return out


def party_rank() -> int:
    """This computing party's rank (0: data owner, 1: model server)."""
    import crypten.communicator as comm

    return comm.get().get_rank()


def open_shares(shares: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum of both parties' int64 shares, for every tensor in one exchange (one round)."""
    import crypten.communicator as comm

    return comm.get().all_reduce(shares, batched=True)
