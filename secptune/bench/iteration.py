"""One tuning iteration under MPC, per method: forward-only tuning against the gradient baselines.

    secptune bench iteration --method sft|prompt-grad|fot-softmax|fot-rfa --model NAME|roberta-large-shape
        --seq N [--batch B] [--layers L] --json [--out FILE]

* ``fot-rfa`` / ``fot-softmax``: the product's iteration for one candidate — one secure forward
  (fixed weight masks, MPC-friendly approximations; secptune.bench.forward does the measuring);
  there is no backward pass.
* ``sft`` / ``prompt-grad``: one training step of the baselines (secptune.baseline) in a
  ``native`` session — forward, backward (CrypTen's autograd) and an Adam step on shares; ``sft``
  updates every weight, ``prompt-grad`` only the prompt.

JSON: ``method``, ``bytes`` (the larger of the owner's and the server's online bytes sent),
``rounds``, ``forward_s``, ``backward_s`` (the Adam step included; ``step_s`` alone), ``phases``
per party, and, with ``--layers L`` below the model's depth, ``extrapolation``: the same
measurements with L and L + 1 layers (the gradient methods) or L and 0 layers (forward only), per
layer = the difference, full model = the L-layer run + (depth − L) × per layer.  Bytes and rounds
are exact; times are this machine's.  Also ``command``, ``git_revision`` and ``machine``
(secptune.bench.common).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mpc import approx, costmodel, launcher
from mpc.roles import COMPUTING
from secptune import baseline_session
from secptune.arch import arch_from_config
from secptune.bench import forward as bf
from secptune.bench.common import BenchError, provenance
from secptune.baseline_session import Train, train_log
from secptune.bench.options import METHODS
from secptune.secure import OwnerRequest, SecureSession
from secptune.server.party import server_description

PHASES = ("forward", "backward", "step")


def owner_job(request, inputs, verbalizer, labels, method, step=True):
    session = SecureSession(request, verbalizer=verbalizer)
    try:
        text_id = session.load_texts(replace(inputs, prompt=None))
        out = baseline_session.train_step(session, text_id, inputs.prompt[:1], labels, method, lr=1e-3, step=step)
    finally:
        session.close()
    return out


def server_job(spec):
    describe, weights = server_description(bf.build_model(spec))
    session = SecureSession(None, server_info=describe, weights=weights, commands=(Train,))
    session.serve()
    return train_log(session)[0]


def train_step(spec, arch, inputs, verbalizer, method: str, timeout_s: float, step: bool = True) -> dict:
    """One secure training step: per party, per phase bytes/rounds/time."""
    labels = torch.nn.functional.one_hot(torch.arange(inputs.pred_onehot.size(0)) % verbalizer.size(0), verbalizer.size(0))
    request = OwnerRequest(
        labels=verbalizer.shape[0], cfg=asdict(approx.ApproxConfig()), expected_vocab=arch.vocab_size, native=True
    )
    results = launcher.run_local(
        owner=launcher.PartyJob(owner_job, (request, inputs, verbalizer, labels.double(), method, step)),
        server=launcher.PartyJob(server_job, (spec,)),
        timeout_s=timeout_s,
    )
    owner, server = results["owner"].value, results["server"].value
    return {"owner": owner["phases"], "server": server["phases"], "loss": float(owner["loss"])}


def full_depth(report: dict) -> dict:
    """The full-model figures of a report: its extrapolation when it ran fewer layers, else itself."""
    return report["extrapolation"]["total"] if "extrapolation" in report else report


def summary(run: dict) -> dict:
    """The issue's fields from one measured step."""
    phases = {p: {role: run[role].get(p, {"bytes": 0, "rounds": 0, "wall_s": 0.0}) for role in COMPUTING} for p in PHASES}
    total = {role: sum(run[role][p]["bytes"] for p in run[role]) for role in COMPUTING}
    rounds = {role: sum(run[role][p]["rounds"] for p in run[role]) for role in COMPUTING}
    wall = {p: phases[p]["owner"]["wall_s"] for p in PHASES}
    return {
        "bytes": max(total.values()),
        "rounds": max(rounds.values()),
        "forward_s": round(wall["forward"], 3),
        "backward_s": round(wall["backward"] + wall["step"], 3),
        "step_s": round(wall["step"], 3),
        "phases": phases,
    }


def gradient_method(args) -> dict:
    depth = bf.full_layers(bf.ModelSpec(args.model))
    layers = args.layers if args.layers is not None and args.layers < depth else None
    spec = bf.ModelSpec(args.model, layers, args.vocab, args.seed)
    arch = arch_from_config(bf.model_config(spec))
    inputs, verbalizer = bf.make_inputs(arch, args.seq, args.batch, args.prompt_len, args.seed)
    started = time.perf_counter()
    step = not args.no_step
    run = train_step(spec, arch, inputs, verbalizer, args.method, args.timeout, step)
    measured = summary(run)
    out = {"method": args.method, "layers_run": arch.layers, "layers_full": depth, **measured, "loss": run["loss"]}
    if not step:
        out["step"] = "skipped (--no-step): the Adam step's cost depends on the trained tensors' sizes only"
    if layers is not None:
        more = replace(spec, layers=layers + 1)
        bigger_arch = arch_from_config(bf.model_config(more))
        bigger = summary(train_step(more, bigger_arch, inputs, verbalizer, args.method, args.timeout, step))
        # the same linear model as the forward benchmark, with the L-layer run as its base
        ext = bf.extrapolate_layers(bigger, measured, 1, depth - layers)
        out["extrapolation"] = {
            "method": f"runs with {layers} and {layers + 1} layers; per layer = difference; "
            f"total = {layers}-layer run + {depth - layers} x per layer",
            "per_layer": ext["per_layer"],
            "total": ext["total"],
        }
    out["run_wall_s"] = round(time.perf_counter() - started, 2)
    return out


def forward_method(args) -> dict:
    fargs = argparse.Namespace(
        model=args.model, seq=args.seq, batch=args.batch, layers=args.layers, mode="secure", device="cpu",
        attention="rfa" if args.method == "fot-rfa" else "softmax", features="positive", num_features=64,
        vocab=args.vocab, seed=args.seed, prompt_len=args.prompt_len, no_fixed_weights=False, plain_repeat=1,
        timeout=args.timeout, range_samples=256, profile=False,  # the product's default range check
    )
    f = bf.run(fargs)

    def fields(comm: dict, wall_s: float) -> dict:
        return {
            "bytes": max(c["bytes"] for c in comm.values()),
            "rounds": max(c["rounds"] for c in comm.values()),
            "forward_s": round(wall_s, 3),
            "backward_s": 0.0,
        }

    online = costmodel.session_online(f["comm"])
    out = {"method": args.method, "layers_run": f["layers_run"], "layers_full": f["layers_full"], **fields(online, f["wall_s"])}
    if "extrapolation" in f:
        # the extrapolated owner counts include its requests to the dealer; the server's are
        # online traffic only, and online traffic is the same for both parties
        ext = f["extrapolation"]
        out["extrapolation"] = {
            "method": ext["method"],
            "per_layer": fields({"server": ext["per_layer"]["comm"]["server"]}, ext["per_layer"]["wall_s"]),
            "total": fields({"server": ext["total"]["comm"]["server"]}, ext["total"]["wall_s"]),
        }
    out["forward_report"] = f
    return out


def run(args) -> dict:
    if args.method not in METHODS:
        raise BenchError(f"--method must be one of {', '.join(METHODS)}")
    if args.layers is not None and args.layers < 1:
        raise BenchError("--layers must be at least 1")
    out = forward_method(args) if args.method.startswith("fot-") else gradient_method(args)
    out.update(model=args.model, seq=args.seq, batch=args.batch)
    return out


def main(args, command: str) -> int:
    """``secptune bench iteration``: measure, add the report's provenance, print (and write) the JSON."""
    out = run(args)
    out.update(provenance(command))
    text = json.dumps(out, indent=None if args.json else 2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json or not args.out:
        print(text)
    return 0
