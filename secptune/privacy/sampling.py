"""Continuous noise from a cryptographic keystream (AES-256-CTR, :mod:`mpc.prg`).

Noise that protects the owner's data must be as unpredictable as a secret-sharing mask:
a Mersenne Twister's outputs give away its state (``mpc.prg``'s docstring), and an
attacker who can predict the noise subtracts it.  So every draw here starts from 53-bit
uniform integers of a :class:`mpc.prg.Stream`; torch/numpy generators are never used.
"""

from __future__ import annotations

import math

import torch

from mpc import prg

_MANTISSA = 53  # float64 mantissa: uniforms on a 2^-53 grid


class NoiseSource:
    """Uniform, normal and Gamma draws from one keystream (a fresh OS key unless ``key``
    is given: tests pass a fixed key to replay a stream)."""

    def __init__(self, key: bytes | None = None, label: str = "privacy-noise"):
        self.stream = prg.stream(key if key is not None else prg.new_key(), label)

    def uniform(self, size) -> torch.Tensor:
        """float64 uniforms in the open interval (0, 1): (k + 1/2) / 2^53, k uniform."""
        k = self.stream.bits(size, _MANTISSA).double()
        return (k + 0.5) / float(1 << _MANTISSA)

    def normal(self, size) -> torch.Tensor:
        """Standard normals by Box–Muller (two uniforms per pair of normals)."""
        shape = torch.Size(size)
        n = math.prod(shape)
        half = (n + 1) // 2
        u1, u2 = self.uniform((half,)), self.uniform((half,))
        r = torch.sqrt(-2.0 * torch.log(u1))
        z = torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)])
        return z[:n].reshape(shape)

    def gamma(self, shape: float, count: int) -> torch.Tensor:
        """``count`` draws of Gamma(shape, 1), shape >= 1, by Marsaglia and Tsang's method
        (ACM TOMS 26(3), 2000): one normal and one uniform per try, tries accepted with
        probability > 0.95 (> 0.999 at the hidden sizes used here); rejected ones are redrawn."""
        if shape < 1:
            raise ValueError(f"Gamma shape must be at least 1, not {shape}")
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        out = torch.empty(count, dtype=torch.float64)
        todo = torch.arange(count)
        while len(todo):
            x, u = self.normal((len(todo),)), self.uniform((len(todo),))
            v = (1.0 + c * x) ** 3
            ok = v > 0
            logv = torch.log(torch.where(ok, v, torch.ones_like(v)))
            ok &= torch.log(u) < 0.5 * x * x + d - d * v + d * logv
            out[todo[ok]] = d * v[ok]
            todo = todo[~ok]
        return out
