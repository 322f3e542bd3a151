"""Server side: fit RFA feature maps to the server's own model, once, and cache them.

The fit (rfa.fit) needs the model's attention inputs on text the server owns;
we use secptune's built-in neutral English corpus (never the owner's data).  The
result depends only on the checkpoint and the attention settings, so it is cached
next to the models and reused by every later session.
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
FIT_VERSION = 3  # 3: Fourier exponentials


def _capture(model, arch, weights) -> list[dict]:
    """Every layer's attention inputs on the public corpus."""
    from secptune.calibrate import public_sequences, run_public_text
    from secptune.transformer import Nonlinear

    sequences = public_sequences(model, arch.vocab_size)
    return run_public_text(arch, weights, sequences, Nonlinear(exact=True), capture=True).capture


def _cache_path(model, attention: AttentionConfig, opts: FitOptions) -> Path:
    from secptune.checkpoints import cache_dir

    source = Path(model.config._name_or_path)
    stamp = [str(source.resolve()), attention.num_features, attention.seed, attention.softmax_layers, opts.steps, FIT_VERSION]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (source / name).is_file():
            stamp.append((source / name).stat().st_mtime_ns)
    key = hashlib.sha256(json.dumps(stamp, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "rfa-fits" / f"{key}.pt"


def fitted_feature_maps(model, arch, weights, attention: AttentionConfig, opts: FitOptions | None = None) -> dict:
    """``l{i}.rfa.{q,k,bq,bk}`` fitted to this model's attention (cached)."""
    from tqdm import tqdm

    opts = opts or FitOptions()
    path = _cache_path(model, attention, opts)
    if path.is_file():
        return torch.load(path, weights_only=True)
    captured = _capture(model, arch, weights)
    acfg = approx.ApproxConfig()
    out = {}
    layers = [i for i in range(arch.layers) if attention.uses_rfa(i)]
    for i in tqdm(layers, desc="fitting RFA feature maps", unit="layer", disable=len(layers) < 4):
        samples = [c for c in captured if c["layer"] == i]
        for name, value in fit_layer(samples, attention.num_features, attention.seed * 1000 + i, acfg, opts).items():
            out[f"l{i}.rfa.{name}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)
    return out
