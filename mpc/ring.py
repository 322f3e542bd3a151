"""Exact matrix products in Z_2^64 (int64 with wrap-around) on float64 BLAS.

Method
------
Every int64 ``x`` is split into three *balanced* (signed) limbs

    x = d0 + d1 * 2^22 + d2 * 2^44   (mod 2^64),   |d0|, |d1| <= 2^21,  |d2| <= 2^19,

computed with wrapping int64 shifts and masks, and the limbs are stored as float64.
Modulo 2^64 only the limb products with shift 22*(i+j) < 64 matter, i.e. i + j <= 2:
six products (a0b0, a0b1, a1b0, a0b2, a1b1, a2b0), issued as three BLAS calls
``[a0; a1; a2] @ b0``, ``[a0; a1] @ b1`` and ``a0 @ b2`` (the a-limbs are stacked
along the rows, so each call is one larger GEMM on a prefix view, no copies).  Each
limb product is at most 2^42 in magnitude, so every float64 partial sum of a chunk
of ``K <= CHUNK_K = 2048`` terms is an integer of magnitude <= 2^53 and therefore
exact, whatever order BLAS sums in (FMA included).  The float results are converted
to int64 and recombined with wrapping shifts/adds (Horner in 2^22).  Longer inner
dimensions are cut into chunks of 2048 whose int64 partial results are summed
(wrapping is harmless modulo 2^64).  Compared with 16-bit limbs (10 products) this
needs 6 products for any K.

Memory
------
Peak extra memory, in units of the int64 operands (float64 is the same 8 bytes):
3x each input for the float64 limbs, plus ~2x the larger input in int64
temporaries while it is split (freed before the products), plus ~7x the int64
output (a 3x float64 product buffer reused by the three GEMMs, three int64
accumulators, one temporary).  Measured for [256x1024]x[1024x4096] (34 MiB of
inputs, 8 MiB output): 211 MiB peak RSS growth, MKL's buffers included.  Broadcast
batch dimensions are materialised in the limbs, as torch.matmul itself does.

Speed (BENCHMARKS.md, "Exact Z_2^64 products")
----------------------------------------------
The limb path costs six float64 GEMMs plus ~25 elementwise passes.  On GPUs CrypTen
already treats int64 GEMM as unavailable and multiplies shares through float64
blocks in its CUDALongTensor wrapper, spending 9-16 float64 products where this
spends six (untested here: no GPU).  On *this* CPU (2-core AMD EPYC with AVX-512,
torch 2.13) torch's own int64 matmul is a vectorised kernel about as fast as ONE
float64 MKL GEMM (0.10-0.2 s for [256x1024]x[1024x4096] here), so the limb path is 3-10x slower there; on an AVX2-only CPU the int64 kernel is
scalar and the limbs are 9-13x faster.  ``method="auto"`` therefore keeps torch's
int64 matmul on AVX-512 CPUs and uses limbs everywhere else.
Force either path with ``method=`` or the environment variable ``MPC_RING_MATMUL``
(``auto`` | ``limbs`` | ``torch``).

CrypTen
-------
:func:`torch_proxy` routes CrypTen's int64 matmuls (Beaver products, the
dealer's triple products, public-matrix products) through :func:`ring_matmul`; see
its docstring for exactly which call sites (:mod:`mpc.crypten_seam` installs it).
"""

from __future__ import annotations

import collections
import functools
import os
import types

import torch

LIMB_BITS = 22  # width of limbs 0 and 1; limb 2 carries the remaining 20 bits
LIMBS = 3
CHUNK_K = 2048  # K * 2^42 <= 2^53: every float64 partial sum of a chunk is exact
_HALF = 1 << (LIMB_BITS - 1)
_MASK = (1 << LIMB_BITS) - 1

METHODS = ("auto", "limbs", "torch")


def _method_default() -> str:
    method = os.environ.get("MPC_RING_MATMUL", "auto")
    if method not in METHODS:
        raise ValueError(f"MPC_RING_MATMUL={method!r}: expected one of {METHODS}")
    return method


def split_limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """The three balanced limbs of int64 ``x`` as int64 tensors (for tests/inspection)."""
    out = [torch.empty(x.shape, dtype=torch.int64, device=x.device) for _ in range(LIMBS)]
    _split_into(x, out)
    return out


def _split_into(x: torch.Tensor, dsts, transform=lambda t: t) -> None:
    """Write the limbs of int64 ``x`` into ``dsts`` (float64 or int64 views).

    ``transform`` maps a limb (shaped like ``x``) onto the destination's shape, e.g. a
    transpose; ``copy_`` then broadcasts and converts.  Wrap-around in ``x + 2^21`` is
    harmless: the shifted value is still congruent modulo 2^64.
    """
    t = x + _HALF
    digit = torch.bitwise_and(t, _MASK)
    digit -= _HALF
    dsts[0].copy_(transform(digit))  # d0 in [-2^21, 2^21)
    t >>= LIMB_BITS  # floor((x + 2^21) / 2^22)
    t += _HALF
    torch.bitwise_and(t, _MASK, out=digit)
    digit -= _HALF
    dsts[1].copy_(transform(digit))  # d1 in [-2^21, 2^21)
    del digit
    t >>= LIMB_BITS
    dsts[2].copy_(transform(t))  # d2 in [-2^19, 2^19]


def _limb_products(a_limbs: torch.Tensor, b_limbs: torch.Tensor, m: int) -> torch.Tensor:
    """Sum over limb products of ``A [Bt, 3m, K]`` (rows: a0, a1, a2) and ``B [3, Bt, K, N]``.

    Returns the int64 result ``[Bt, m, N]`` modulo 2^64.
    """
    bt, _, k = a_limbs.shape
    n = b_limbs.shape[-1]
    dev = a_limbs.device
    acc: list = [None] * LIMBS  # int64 sums of the limb products with shift 22*s
    buf = torch.empty(bt * LIMBS * m * n, dtype=torch.float64, device=dev)
    for k0 in range(0, k, CHUNK_K):
        k1 = min(k, k0 + CHUNK_K)
        for j in range(LIMBS):  # b_j times the a-limbs a_0 .. a_{2-j}
            rows = (LIMBS - j) * m
            prod = buf[: bt * rows * n].view(bt, rows, n)
            lhs = a_limbs[:, :rows, k0:k1]
            rhs = b_limbs[j, :, k0:k1, :]
            if bt == 1:
                torch.mm(lhs[0], rhs[0], out=prod[0])
            else:
                torch.bmm(lhs, rhs, out=prod)
            for i in range(LIMBS - j):
                part = prod[:, i * m : (i + 1) * m].to(torch.int64)  # exact: |part| <= 2^53
                if acc[i + j] is None:
                    acc[i + j] = part
                else:
                    acc[i + j] += part
    # Horner: acc0 + 2^22 * (acc1 + 2^22 * acc2)  (mod 2^64)
    out = acc[2]
    out <<= LIMB_BITS
    out += acc[1]
    out <<= LIMB_BITS
    out += acc[0]
    return out


def _as_3d(a: torch.Tensor, b: torch.Tensor):
    """Lay out the limbs for one GEMM (or one batched GEMM) and say how to read back.

    Returns (A [Bt, 3m, K], B [3, Bt, K, N], m, finish) where ``finish`` turns the
    ``[Bt, m, N]`` int64 result into torch.matmul's output.
    """
    dev = a.device
    k = a.shape[-1]
    f64 = dict(dtype=torch.float64, device=dev)
    if b.dim() == 2:
        # fold every batch dim of a into the rows: one GEMM
        lead = a.shape[:-1]
        m = a[..., 0].numel()
        A = torch.empty((LIMBS, *lead, k), **f64)
        _split_into(a, A)
        B = torch.empty((LIMBS, 1, k, b.shape[-1]), **f64)
        _split_into(b, B[:, 0])
        return A.view(1, LIMBS * m, k), B, m, lambda r: r.view(*lead, b.shape[-1])
    if a.dim() == 2:
        # (a @ b)^T = b^T @ a^T: fold b's batch dims into the rows of one GEMM
        lead = b.shape[:-2] + b.shape[-1:]
        m = b[..., 0, :].numel()
        A = torch.empty((LIMBS, *lead, k), **f64)
        _split_into(b, A, lambda t: t.transpose(-1, -2))
        B = torch.empty((LIMBS, 1, k, a.shape[0]), **f64)
        _split_into(a, B[:, 0], lambda t: t.t())

        def finish(r):
            out = torch.empty(b.shape[:-2] + (a.shape[0], b.shape[-1]), dtype=torch.int64, device=dev)
            out.copy_(r.view(*lead[:-1], b.shape[-1], a.shape[0]).transpose(-1, -2))
            return out

        return A.view(1, LIMBS * m, k), B, m, finish
    # both batched: broadcast the batch dims, one bmm per limb of b
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, n = a.shape[-2], b.shape[-1]
    bt = 1
    for s in batch:
        bt *= s
    A = torch.empty((*batch, LIMBS, m, k), **f64)
    _split_into(a, A.unbind(-3))
    B = torch.empty((LIMBS, *batch, k, n), **f64)
    _split_into(b, B)
    return A.view(bt, LIMBS * m, k), B.view(LIMBS, bt, k, n), m, lambda r: r.view(*batch, m, n)


def _limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float64-limb product for a, b with dim >= 2 and matching K (checked)."""
    A, B, m, finish = _as_3d(a, b)
    return finish(_limb_products(A, B, m))


def _use_limbs(a: torch.Tensor, b: torch.Tensor, method: str) -> bool:
    if method != "auto":
        return method == "limbs"
    # auto.  Off the CPU (CUDA: CrypTen's CUDALongTensor exists because int64 GEMM
    # is not available there) limbs whatever the size.  On the CPU it depends on
    # the vector unit: with AVX-512 torch's int64 kernel beat the six float64 GEMMs
    # on every shape measured; with AVX2 only, limbs were 9-13x faster
    # (BENCHMARKS.md, "Exact Z_2^64 products"; docs/history.md for the AVX-512 machine's runs).
    return a.device.type != "cpu" or not _cpu_has_fast_int64()


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_int64() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def ring_matmul(a: torch.Tensor, b: torch.Tensor, *, method: str | None = None) -> torch.Tensor:
    """``torch.matmul(a, b)`` for int64 tensors, bit-identical (i.e. exact mod 2^64).

    Supports torch.matmul's shapes: 1-D vectors, 2-D, and batched N-D with
    broadcasting.  ``method``: ``"limbs"`` (float64 BLAS on 22-bit limbs),
    ``"torch"`` (torch's int64 matmul) or ``"auto"`` (default, or the environment
    variable ``MPC_RING_MATMUL``): limbs on GPUs (whatever the size), torch's kernel
    on the CPU, where it is faster for every shape measured, so there is no size
    crossover to apply there.
    ``"limbs"`` always takes the limb path.  Raises TypeError unless both inputs are
    int64 tensors; shape errors are torch.matmul's own.
    """
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        raise TypeError(f"ring_matmul takes tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"ring_matmul takes int64 tensors, got {a.dtype} and {b.dtype}")
    method = _method_default() if method is None else method
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if not _use_limbs(a, b, method):
        return torch.matmul(a, b)
    if a.device != b.device:
        raise ValueError(f"ring_matmul: a is on {a.device} but b is on {b.device}")
    shape = torch.matmul(a.to("meta"), b.to("meta")).shape  # torch's shape checks/errors
    if a.numel() == 0 or b.numel() == 0:
        return torch.zeros(shape, dtype=torch.int64, device=a.device)
    va, vb = a.dim() == 1, b.dim() == 1  # vectors: promote, multiply, drop the dim
    out = _limb_matmul(a.unsqueeze(0) if va else a, b.unsqueeze(-1) if vb else b)
    return out.view(shape)


# --------------------------------------------------------------------------- CrypTen


# How CrypTen's patched matmuls were served in this process: "limbs"/"torch" (the
# kernel ring_matmul chose).
calls: collections.Counter = collections.Counter()


def _unwrap(x):
    """(int64 torch.Tensor or None, wrapped) for a plain tensor or a CUDALongTensor."""
    if type(x) is torch.Tensor:
        return (x if x.dtype == torch.int64 else None), False
    if _CUDA_LONG is not None and isinstance(x, _CUDA_LONG):
        t = x._tensor
        return (t if type(t) is torch.Tensor and t.dtype == torch.int64 else None), True
    return None, False


def _ring_or_none(a, b):
    """ring_matmul of two int64 operands (CrypTen's CUDALongTensor unwrapped and the
    result re-wrapped), or None when the operands are anything else."""
    ta, wa = _unwrap(a)
    tb, wb = _unwrap(b)
    if ta is None or tb is None:
        return None
    method = _method_default()
    calls["limbs" if _use_limbs(ta, tb, method) else "torch"] += 1
    out = ring_matmul(ta, tb, method=method)
    if wa or wb:
        wrapped = _CUDA_LONG()
        wrapped._tensor = out
        return wrapped
    return out


def _crypten_matmul(a, b, *args, **kwargs):
    """torch.matmul as seen by the patched CrypTen modules."""
    out = None if args or kwargs else _ring_or_none(a, b)
    return torch.matmul(a, b, *args, **kwargs) if out is None else out


_CUDA_LONG = None


class _TorchProxy(types.ModuleType):
    """Stands in for ``torch`` inside one CrypTen module: every attribute is torch's,
    except ``matmul``."""

    def __init__(self, matmul):
        super().__init__("torch")
        self.matmul = matmul
        self._mpc_ring_proxy = True

    def __getattr__(self, name):
        return getattr(torch, name)


def torch_proxy(_original_torch=None) -> types.ModuleType:
    """What a CrypTen module gets as its global ``torch``: int64 matmuls go to :func:`ring_matmul`.

    CrypTen 0.4.1 calls ``getattr(torch, op)(...)`` with ``op == "matmul"`` on int64
    tensors at these sites, each resolving ``torch`` in its module's globals
    (:mod:`mpc.crypten_seam` installs one proxy in each of the three modules):

    * ``crypten.mpc.primitives.beaver.__beaver_protocol``: the parties' local
      ``epsilon @ b``, ``a @ delta`` and ``epsilon @ delta``;
    * ``crypten.mpc.primitives.arithmetic.ArithmeticSharedTensor._arithmetic_function``:
      share @ public int64 matrix (the public-operand path of ``matmul``);
    * ``crypten.mpc.provider.tfp_provider.TrustedFirstParty.generate_additive_triple``:
      ``c = a @ b`` (the TFP provider; secptune uses TTP).

    The dealer's ``c = a @ b`` (mpc.dealer) calls ring_matmul itself, and the parties'
    triple shapes come from meta tensors (no product computed).  The proxy forwards
    every attribute to torch except ``matmul``: a pair of int64 operands without extra
    arguments goes to ring_matmul -- plain tensors, or CrypTen's ``CUDALongTensor``
    wrappers on GPUs (unwrapped, result re-wrapped; this replaces CrypTen's own
    16-bit-block GPU matmul, 9-16 float64 products, by six); anything else (floats,
    ``out=``) goes to torch.matmul.  Which kernel ring_matmul uses is its ``auto``
    policy / ``MPC_RING_MATMUL``.
    """
    global _CUDA_LONG
    from crypten.cuda import CUDALongTensor

    _CUDA_LONG = CUDALongTensor
    return _TorchProxy(_crypten_matmul)
