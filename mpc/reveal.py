"""Reveal a secret-shared tensor to one party, decoding fixed point exactly.

CrypTen's ``get_plain_text`` decodes with a rounding bug: some negatives just
above an integer come out exactly 1.0 too low (-3 + 2^-16 -> -3.99998).  Revealed
scores feed the data owner's loss, so we decode the ring element ourselves:
floor-divide by the scale, then add the remainder divided by the scale.

Every reveal goes through :func:`reveal_to`, which also records who received
what shape, so tests can assert that only the data owner ever sees plaintext.
"""

from __future__ import annotations

import torch

_REVEALS: list[tuple[int, tuple[int, ...]]] = []


def decode(ring: torch.Tensor, scale: int) -> torch.Tensor:
    """Exact fixed-point decode of int64 ring elements to float64."""
    quotient = torch.div(ring, scale, rounding_mode="floor")
    remainder = ring - quotient * scale
    return quotient.double() + remainder.double() / scale


def reveal_to(x, dst: int) -> torch.Tensor | None:
    """Open ``x`` (an arithmetic MPCTensor) to party ``dst`` only; others get None."""
    import crypten.communicator as comm

    shared = x._tensor
    ring = shared.reveal(dst=dst)
    _REVEALS.append((dst, tuple(x.size())))
    if comm.get().get_rank() != dst:
        return None
    return decode(ring, int(shared.encoder.scale))


def reveal_all_to(xs: list, dst: int) -> list[torch.Tensor] | None:
    """Open several arithmetic MPCTensors (same fixed-point scale) to party ``dst`` in one
    exchange; each is recorded as its own reveal.  Others get None."""
    import crypten
    import crypten.communicator as comm

    scale = int(xs[0]._tensor.encoder.scale)
    if any(int(x._tensor.encoder.scale) != scale for x in xs):
        raise ValueError("reveal_all_to: the tensors must share one fixed-point scale")
    flat = crypten.cat([x.reshape(-1) for x in xs]) if len(xs) > 1 else xs[0].reshape(-1)
    ring = flat._tensor.reveal(dst=dst)
    _REVEALS.extend((dst, tuple(x.size())) for x in xs)
    if comm.get().get_rank() != dst:
        return None
    values = decode(ring, scale)
    return [part.reshape(x.size()) for part, x in zip(values.split([x.numel() for x in xs]), xs)]


def reveals() -> list[tuple[int, tuple[int, ...]]]:
    """(destination rank, shape) of every reveal made by this process."""
    return list(_REVEALS)
