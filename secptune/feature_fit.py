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
FIT_VERSION = 2


def _public_sequences(tokenizer, count: int = 8, lines_each: int = 4) -> list[list[int]]:
    """``count`` sequences of a few corpus lines each (longer sequences, fewer samples: a
    faster fit with the same amount of text)."""
    from secptune.tiny_corpus import TEXT

    lines = [line.strip() for line in TEXT.splitlines() if line.strip()]
    chunks = [" ".join(lines[i : i + lines_each]) for i in range(0, count * lines_each, lines_each)]
    return [tokenizer(chunk, add_special_tokens=False)["input_ids"] for chunk in chunks if chunk]


def _capture(model, arch, weights, sequences) -> list[dict]:
    from secptune.transformer import Batch, Nonlinear, Transformer

    teacher = Transformer(arch, weights, Nonlinear(exact=True))
    teacher.capture = []
    with torch.no_grad():
        for ids in sequences:
            h = weights["emb.word"][torch.tensor(ids)].unsqueeze(0)
            if arch.family == "causal":
                teacher._causal(h)
            else:
                if "emb.type" in weights:
                    h = h + weights["emb.type"][0]
                teacher._encoder(h, Batch(token_onehot=None, prompt=None, pred_onehot=None))
    return teacher.capture


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

    from secptune.checkpoints import load_tokenizer

    opts = opts or FitOptions()
    path = _cache_path(model, attention, opts)
    if path.is_file():
        return torch.load(path, weights_only=True)
    tokenizer = load_tokenizer(model.config._name_or_path)
    captured = _capture(model, arch, weights, _public_sequences(tokenizer))
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
