"""Server side: fit RFA feature maps to the server's own model, once, and cache them.

The fit (rfa.fit) needs the model's attention inputs on text the server owns;
we use secptune's built-in neutral English corpus (never the owner's data).  Each
layer's fit sees the *exact* model's inputs to that layer, so it does not depend on
which other layers keep softmax: every layer is fitted once and a hybrid takes its
layers from that one fit.  The cache is keyed by the weights' content (not a
path), so a fit made on one machine serves the same checkpoint on another.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from mpc import approx
from rfa.config import AttentionConfig
from rfa.fit import FitOptions, fit_layer

log = logging.getLogger(__name__)
FIT_VERSION = 4  # 4: all layers in one fit, keyed by the weights' content


def _capture(model, arch, weights) -> list[dict]:
    """Every layer's attention inputs on the public corpus."""
    from secptune.calibrate import public_sequences, run_public_text
    from secptune.transformer import Nonlinear

    sequences = public_sequences(model, arch.vocab_size)
    return run_public_text(arch, weights, sequences, Nonlinear(exact=True), capture=True).capture


def weights_fingerprint(weights: dict) -> str:
    """SHA-256 of the canonical weights (names, shapes and float64 bytes)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu", torch.float64).contiguous()
        digest.update(f"{name}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _cache_path(weights: dict, attention: AttentionConfig, opts: FitOptions) -> Path:
    from secptune.checkpoints import cache_dir

    stamp = [weights_fingerprint(weights), attention.num_features, attention.seed, opts.steps, FIT_VERSION]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return cache_dir() / "rfa-fits" / f"{key}.pt"


def fitted_feature_maps(model, arch, weights, attention: AttentionConfig, opts: FitOptions | None = None) -> dict:
    """``l{i}.rfa.{q,k,bq,bk}`` of the RFA layers, fitted to this model's attention (cached)."""
    opts = opts or FitOptions()
    path = _cache_path(weights, attention, opts)
    if path.is_file():
        fits = torch.load(path, weights_only=True)
    else:
        fits = _fit_all(model, arch, weights, attention, opts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(fits, tmp)
        tmp.replace(path)
    return {name: t for name, t in fits.items() if attention.uses_rfa(int(name.split(".")[0][1:]))}


def _fit_all(model, arch, weights, attention: AttentionConfig, opts: FitOptions) -> dict:
    from tqdm import tqdm

    captured = _capture(model, arch, weights)
    acfg = approx.ApproxConfig()
    out = {}
    for i in tqdm(range(arch.layers), desc="fitting RFA feature maps", unit="layer", disable=arch.layers < 4):
        samples = [c for c in captured if c["layer"] == i]
        for name, value in fit_layer(samples, attention.num_features, attention.seed * 1000 + i, acfg, opts).items():
            out[f"l{i}.rfa.{name}"] = value
    return out
