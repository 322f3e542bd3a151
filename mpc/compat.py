"""Make CrypTen 0.4.1 importable on current torch.

CrypTen 0.4.1 (2022) imports its ONNX converter at package import time, and that
converter needs the ``onnx`` package and torch internals that no longer exist on
torch >= 2.1.  secptune never converts ONNX graphs, so we register a stand-in
converter module *before* CrypTen is imported.  Every process that touches CrypTen
(owner, server, dealer — each is spawned fresh) must import this module first;
``mpc/__init__`` does so, so ``import mpc`` is enough.
"""

from __future__ import annotations

import sys
import types

_STUB_NAME = "crypten.nn.onnx_converter"


def _unsupported(*_args, **_kwargs):
    raise NotImplementedError(
        "CrypTen's ONNX converter is disabled in secptune (it does not work on this "
        "torch); build secure models with secptune's own transformer instead."
    )


def install() -> None:
    """Register the stand-in converter; idempotent and cheap."""
    if _STUB_NAME in sys.modules:
        return
    stub = types.ModuleType(_STUB_NAME)
    stub.__doc__ = "secptune stand-in: ONNX conversion is not available."
    stub.from_onnx = _unsupported
    stub.from_pytorch = _unsupported
    stub.from_tensorflow = _unsupported
    stub.TF_AND_TF2ONNX = False
    sys.modules[_STUB_NAME] = stub


install()
