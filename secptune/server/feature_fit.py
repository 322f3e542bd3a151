"""Server side: fit RFA feature maps to the server's own model and choose its RFA layers, once.

The fit (rfa.fit) needs the model's attention inputs on text the server owns
(secptune.server.public_text: the built-in corpus plus the model's own samples; never the
owner's data).  Each layer's fit sees the *exact* model's inputs to that layer, so
it does not depend on which other layers keep softmax: every layer is fitted once
and a hybrid takes its layers from that one fit.

With ``auto_kl`` the server also chooses the hybrid (secptune.server.layer_choice) on held-out
public text.  Fits and choices are cached by the weights' content (not a path), so a
fit made on one machine serves the same checkpoint on another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, astuple, replace
from pathlib import Path

import torch

from mpc import approx
from rfa.config import AttentionConfig
from rfa.fit import FitOptions, fit_layer
from secptune.arch import Arch
from secptune.checkpoints import cache_dir
from secptune.server.calibrate import run_public_text, with_activation_bounds
from secptune.server.layer_choice import choose_layers
from secptune.server.parallel import map_jobs
from secptune.server.public_text import public_text
from secptune.nonlinear import ExactNonlinear

log = logging.getLogger(__name__)
FIT_VERSION = 9  # 9: the saturating exp in closed form, not a table of its series; 8: the feature exp saturates above its knee (rfa_exp_reach); 7: 4 sequences per batch and step; 6: the series from a table; 5: + model samples


def weights_fingerprint(weights: dict) -> str:
    """SHA-256 of the canonical weights (names, shapes and float64 bytes)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to("cpu", torch.float64).contiguous()
        digest.update(f"{name}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _cache_path(fingerprint: str, stamp: list, suffix: str) -> Path:
    key = hashlib.sha256(json.dumps([fingerprint, *stamp, FIT_VERSION]).encode()).hexdigest()[:16]
    return cache_dir() / "rfa-fits" / f"{key}{suffix}"


def _save(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write(tmp)
    tmp.replace(path)


def fitted_attention(model, arch, weights, attention: AttentionConfig, opts: FitOptions | None = None,
                     timings: dict | None = None):
    """``(arch, maps, attention, choice)`` for fitted RFA: ``maps`` holds ``l{i}.rfa.{q,k,bq,bk}``
    of the RFA layers, ``attention`` is resolved (the server's layer choice made; ``choice``
    says how, or is None without a budget), and ``arch``'s activation bounds also cover the
    model *with* this attention on public text (all cached by the weights' content; the fit
    layer by layer, so a killed preparation resumes where it stopped).  ``timings`` gets the
    seconds of each stage (0 where the cache answered)."""
    opts = opts or FitOptions()
    timings = {} if timings is None else timings
    fingerprint = weights_fingerprint(weights)
    with _timed(timings, "public_text"):
        text = public_text(model, arch, fingerprint)
    path = _cache_path(fingerprint, [attention.num_features, attention.seed, *astuple(opts)], ".pt")
    with _timed(timings, "fit"):
        if path.is_file():
            fits = torch.load(path, weights_only=True)
        else:
            fits = _fit_all(arch, weights, text.fit, attention, opts, path.with_suffix(".layers"))
            _save(path, lambda p: torch.save(fits, p))
            shutil.rmtree(path.with_suffix(".layers"), ignore_errors=True)
    choice = None
    if attention.auto_kl is not None:
        with _timed(timings, "layer_choice"):
            attention, choice = _choice(fingerprint, arch, {**weights, **fits}, text, attention, opts)
    maps = {name: t for name, t in fits.items() if attention.uses_rfa(int(name.split(".")[0][1:]))}
    # a pass of the hybrid over all public text (SmolLM2: ~1 min on 2 cores), once per hybrid
    stamp = [attention.as_dict(), *astuple(opts), asdict(approx.ApproxConfig()), _bounds_of(arch)]
    bounds_path = _cache_path(fingerprint, stamp, "-channel-bounds.json")
    if bounds_path.is_file():
        saved = json.loads(bounds_path.read_text())
        return Arch.from_dict({**arch.to_dict(), **saved}), maps, attention, choice
    with _timed(timings, "hybrid_bounds"):
        arch = with_activation_bounds(model, arch, {**weights, **maps}, text.fit + text.check, attention)
    _save(bounds_path, lambda p: p.write_text(json.dumps(_bounds_of(arch))))
    return arch, maps, attention, choice


def _bounds_of(arch: Arch) -> dict:
    """The calibrated part of ``arch`` as JSON-ready lists (a cache entry, and a cache key)."""
    d = arch.to_dict()
    return json.loads(json.dumps({"act_bounds": d["act_bounds"], "act_channels": d["act_channels"]}))


def _choice(fingerprint, arch, weights, text, attention: AttentionConfig, opts: FitOptions) -> tuple[AttentionConfig, dict]:
    # the choice measures the secure run's approximations: a change to them is a new choice;
    # the per-layer damage does not depend on the budget (a new budget reuses it)
    stamp = [*astuple(opts), asdict(approx.ApproxConfig())]
    path = _cache_path(fingerprint, [attention.as_dict(), *stamp], "-choice.json")
    damage_path = _cache_path(fingerprint, [replace(attention, auto_kl=None).as_dict(), *stamp], "-damage.json")
    if path.is_file():
        choice = json.loads(path.read_text())
    else:
        damage = json.loads(damage_path.read_text()) if damage_path.is_file() else None
        choice = choose_layers(arch, weights, text.check, attention, damage)
        _save(path, lambda p: p.write_text(json.dumps(choice, indent=1)))
    if not damage_path.is_file():
        _save(damage_path, lambda p: p.write_text(json.dumps(choice["damage"])))
    log.info("server's RFA layers: %s (KL %.3f on public text)", choice["rfa_layers"], choice["kl"])
    rfa = set(choice["rfa_layers"])
    resolved = replace(attention, auto_kl=None, softmax_layers=tuple(i for i in range(arch.layers) if i not in rfa))
    return resolved, choice


def _fit_all(arch, weights, sequences, attention: AttentionConfig, opts: FitOptions, partial: Path) -> dict:
    """Every layer's maps, the layers fitted side by side (secptune.server.parallel); each layer is
    saved under ``partial`` as it is fitted (and reused from there), so a preparation killed in
    the fit loses the layers in progress at most."""
    acfg = approx.ApproxConfig()
    saved = {i: partial / f"l{i}.pt" for i in range(arch.layers)}
    fits = {i: torch.load(path, weights_only=True) for i, path in saved.items() if path.is_file()}
    if fits:
        log.info("resuming the RFA fit: %d of %d layers were fitted before", len(fits), arch.layers)
    todo = [i for i in range(arch.layers) if i not in fits]
    if todo:  # the layers' attention inputs on public text: one pass
        captured = run_public_text(arch, weights, sequences, ExactNonlinear(), capture=True,
                                   desc="attention inputs for the fit").capture

        def fit(i: int) -> dict:
            fitted = fit_layer([c for c in captured if c["layer"] == i], attention.num_features,
                               attention.seed * 1000 + i, acfg, opts)
            _save(saved[i], lambda p: torch.save(fitted, p))
            return fitted

        fits.update(zip(todo, map_jobs(fit, todo, "fitting RFA feature maps", "layer", show=arch.layers >= 4)))
    return {f"l{i}.rfa.{name}": value for i in range(arch.layers) for name, value in fits[i].items()}


@contextlib.contextmanager
def _timed(timings: dict, stage: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
