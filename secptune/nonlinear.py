"""The non-linear steps of the one model definition, as three strategies.

The transformer (secptune.transformer) is the same code in every mode; only these
steps differ:

* :class:`Nonlinear` — the MPC-friendly approximations of :mod:`mpc.approx`: the
  secure run's protocol on shares and, on plaintext, the *oracle* it must match;
* :class:`ExactNonlinear` — the original functions (plaintext only): reproduces the
  Hugging Face model;
* :class:`NativeNonlinear` — the training baselines' forms (secptune.baseline): CrypTen's
  own softmax, a product-only inverse square root and sigmoid-form activations, all of
  which CrypTen's autograd differentiates; on plaintext the same formulas in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpc import approx
from mpc.accounting import section
from mpc.opened import Unopened, open_once
from rfa.config import SOFTMAX, AttentionConfig
from rfa.softmax_attention import attention as softmax_attention

EXACT_ACTIVATIONS = {
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    **{name: lambda x: torch.nn.functional.gelu(x, approximate="tanh") for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")},
}


@dataclass
class Nonlinear:
    """The approximations: ``cfg`` their knobs and ranges, ``monitor`` counts (plaintext) or
    samples (secure) inputs outside those ranges, ``attention`` which layers run RFA."""

    cfg: approx.ApproxConfig = field(default_factory=approx.ApproxConfig)
    monitor: approx.RangeMonitor = field(default_factory=approx.RangeMonitor)
    attention: AttentionConfig = SOFTMAX
    trainable = False  # CrypTen's autograd can differentiate these forms (the baselines need it)

    def act(self, x, name: str, bound: float | approx.ChannelBounds):
        with section("activation"):
            return self._act(x, name, bound)

    def _act(self, x, name: str, bound: float | approx.ChannelBounds):
        return approx.activation(x, name, bound, self.cfg, self.monitor)

    def normalize(self, x, eps: float, centre: bool):
        """x̂ = (x − mean)/√(var + eps) (LayerNorm, ``centre``) or x/√(mean x² + eps) (RMSNorm),
        without γ/β: those are folded into the next linears (secptune.arch.fold_norms)."""
        with section("norm"):
            if centre:
                x = x - x.mean(-1, keepdim=True)
            return self._scale(x, eps, centre)

    def _scale(self, x, eps: float, centre: bool):
        name = "layer_norm_variance" if centre else "rms_norm_mean_square"
        return approx.normalize(x, eps, self.cfg, self.monitor, name)

    def open(self, x):
        """x opened once (mpc.opened) for all its products: the next linear and, in
        post-norm models, the residual's x̂·γ; on plaintext a pass-through."""
        with section("norm"):
            return self._open(x)

    def _open(self, x):
        return open_once(x)

    def softmax_attention(self, q, k, v, penalty):
        return softmax_attention(q, k, v, penalty, exact=False, cfg=self.cfg, monitor=self.monitor)


@dataclass
class ExactNonlinear(Nonlinear):
    """The original functions, plaintext only."""

    def _act(self, x, name: str, bound: float | approx.ChannelBounds):
        if name not in EXACT_ACTIVATIONS:
            raise ValueError(f"activation {name!r} is not supported")
        return EXACT_ACTIVATIONS[name](x)

    def _scale(self, x, eps: float, centre: bool):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)

    def softmax_attention(self, q, k, v, penalty):
        return softmax_attention(q, k, v, penalty, exact=True, cfg=self.cfg, monitor=self.monitor)


@dataclass
class NativeNonlinear(Nonlinear):
    """CrypTen-differentiable forms for the training baselines (GeLU ≈ x·σ(1.702x))."""

    trainable = True

    def _act(self, x, name: str, bound: float | approx.ChannelBounds):
        if name not in approx.FOURIER_KINDS:
            raise ValueError(f"activation {name!r} is not supported")
        return x * (x if name == "silu" else x * 1.702).sigmoid()

    def _scale(self, x, eps: float, centre: bool):
        ms = x.square().mean(-1, keepdim=True) + eps
        return x * approx.rsqrt_wide(ms, self.cfg.norm_range[0], self.cfg.norm_range[1])

    def _open(self, x):
        return Unopened(x)  # CrypTen's autograd must see every product

    def softmax_attention(self, q, k, v, penalty):
        return softmax_attention(q, k, v, penalty, exact=False, cfg=self.cfg, monitor=self.monitor, native=True)
