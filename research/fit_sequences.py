"""Does fitting RFA maps on a few sequences of each batch per step cost accuracy? (issue 26)

`rfa.fit.fit_layer` is bound by element-wise work on the [b, h, m, n] attention weights of every
captured batch; with ``FitOptions(sequences=4)`` each step sees 4 of a batch's 16 sequences, the
next 4 at the next step.  This fits a few SmolLM2 layers both ways on the server's public text
(the fitting part) and measures the relative attention error on its held-out part, and the
seconds per layer.

    python -m research.fit_sequences --layers 0,9,20 --out reports/prepare/fit_sequences.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from mpc import approx
from rfa.config import DEFAULT_RFA
from rfa.fit import FitOptions, attention_error, fit_layer
from secptune.bench.common import provenance
from secptune.checkpoints import load_hf_model, resolve_model
from secptune.nonlinear import ExactNonlinear
from secptune.server.calibrate import run_public_text
from secptune.server.feature_fit import weights_fingerprint
from secptune.server.prepare import prepare_server_model
from secptune.server.public_text import public_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", default="0,9,20")
    ap.add_argument("--out", default="reports/prepare/fit_sequences.json")
    args = ap.parse_args()
    layers = [int(i) for i in args.layers.split(",")]
    model = load_hf_model(resolve_model(args.model))
    server = prepare_server_model(model)  # softmax: canonical weights, prefix keys/values, bounds
    arch, weights = server.arch, server.weights
    text = public_text(model, arch, weights_fingerprint(weights))
    depth = type(arch).from_dict({**arch.to_dict(), "layers": max(layers) + 1})
    fit = run_public_text(depth, weights, text.fit, ExactNonlinear(), capture=True).capture
    held = run_public_text(depth, weights, text.check, ExactNonlinear(), capture=True).capture
    acfg, cfg = approx.ApproxConfig(), replace(DEFAULT_RFA, auto_kl=None)
    out = {}
    for i in layers:
        samples, check = [c for c in fit if c["layer"] == i], [c for c in held if c["layer"] == i]
        for name, opts in (("all", FitOptions(sequences=0)), ("four", FitOptions(sequences=4))):
            started = time.perf_counter()
            maps = fit_layer(samples, cfg.num_features, cfg.seed * 1000 + i, acfg, opts)
            seconds = time.perf_counter() - started
            out.setdefault(str(i), {})[name] = {"s": round(seconds, 1),
                                                "rel_err": round(attention_error(check, maps, acfg, cfg), 4)}
            print(i, name, out[str(i)][name], flush=True)
    report = {"question": "RFA fit, every sequence per step vs 4: seconds per layer and held-out attention error",
              **provenance(f"python -m research.fit_sequences --layers {args.layers}"), "layers": out}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
