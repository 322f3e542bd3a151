"""Where a plaintext session computes: the CPU, or a CUDA GPU when one is asked for.

Only plain mode runs on a GPU: the secure run's ring arithmetic (int64 products
over Z_2^64) is CPU code in this version.  Results always come back to the CPU,
so the tuner and the reports never see a device tensor.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch

from secptune.batch import OneHot
from secptune.errors import InputError

DEVICES = ("cpu", "cuda")


def resolve_device(name: str | None) -> torch.device:
    """``torch.device`` for ``--device``; a clear error when CUDA is asked for and absent."""
    name = name or "cpu"
    if name not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"--device cuda: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
            "(or install a CUDA build of torch on a GPU machine)"
        )
    return torch.device(name)


def batch_to(batch, device: torch.device, dtype: torch.dtype | None = None):
    """A copy of a plaintext :class:`secptune.batch.Batch` with its tensors on ``device`` and,
    given a ``dtype``, its float tensors in that precision (a float32 session must not meet a
    float64 mask or one-hot: torch would promote the whole forward back to float64)."""
    def move(x):
        if isinstance(x, OneHot):
            return OneHot(x.ids.to(device), x.size_)
        if not isinstance(x, torch.Tensor):
            return x
        return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)

    return replace(
        batch,
        token_onehot=move(batch.token_onehot),
        prompt=move(batch.prompt),
        pred_onehot=move(batch.pred_onehot),
        key_penalty=move(batch.key_penalty),
        type_onehot=move(batch.type_onehot),
    )


@contextmanager
def flushed_subnormals(dtype: torch.dtype):
    """float32 forwards with subnormals flushed to zero, then torch's default (no flushing) again.

    The limit exp of masked and far-below-max attention logits passes through float32's
    subnormal range (below 1.2e-38), which x86 CPUs compute ~100x slower: on SmolLM2 it made a
    float32 forward 2.2x slower (56 s vs 26 s for 64 SST-2 sequences).  Such a value is 0 in the
    secure run's 16-bit fixed point anyway, and below 1e-38 against weights of order one in
    plaintext.  float64 (the oracle) is left alone: its subnormals lie below 1e-308.
    """
    if dtype != torch.float32:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
