#!/usr/bin/env python
"""One tuning iteration under MPC, per method: forward-only tuning against the gradient baselines.

    scripts/bench_iteration.py --method sft|prompt-grad|fot-softmax|fot-rfa --model NAME|roberta-large-shape
        --seq N [--batch B] [--layers L] --json [--out FILE]

* ``fot-rfa`` / ``fot-softmax``: the product's iteration for one candidate — one secure forward
  (fixed weight masks, MPC-friendly approximations; scripts/bench_forward.py does the measuring);
  there is no backward pass.
* ``sft`` / ``prompt-grad``: one training step of the baselines (secptune.baseline) in a
  ``native`` session — forward, backward (CrypTen's autograd) and an Adam step on shares; ``sft``
  updates every weight, ``prompt-grad`` only the prompt.

JSON: ``method``, ``bytes`` (the larger of the owner's and the server's online bytes sent),
``rounds``, ``forward_s``, ``backward_s`` (the Adam step included; ``step_s`` alone), ``phases``
per party, and, with ``--layers L`` below the model's depth, ``extrapolation``: the same
measurements with L and L + 1 layers (the gradient methods) or L and 0 layers (forward only), per
layer = the difference, full model = the L-layer run + (depth − L) × per layer.  Bytes and rounds
are exact; times are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_forward as bf  # noqa: E402

METHODS = ("sft", "prompt-grad", "fot-softmax", "fot-rfa")
PHASES = ("forward", "backward", "step")


def owner_job(request, inputs, verbalizer, labels, method, step=True):
    from secptune.secure import SecureSession

    session = SecureSession(request, verbalizer=verbalizer)
    try:
        text_id = session.load_texts(replace(inputs, prompt=None))
        out = session.train(text_id, inputs.prompt[:1], labels, method, lr=1e-3, step=step)
    finally:
        session.close()
    return out


def server_job(spec):
    from secptune.secure import SecureSession, server_description

    describe, weights = server_description(bf.build_model(spec))
    session = SecureSession(None, server_info=describe, weights=weights)
    session.serve()
    return session.train_log[0]


def train_step(spec, arch, inputs, verbalizer, method: str, timeout_s: float, step: bool = True) -> dict:
    """One secure training step: per party, per phase bytes/rounds/time."""
    from mpc import approx, launcher
    from secptune import secure

    labels = torch.nn.functional.one_hot(torch.arange(inputs.pred_onehot.size(0)) % verbalizer.size(0), verbalizer.size(0))
    request = secure.OwnerRequest(
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
    phases = {p: {role: run[role].get(p, {"bytes": 0, "rounds": 0, "wall_s": 0.0}) for role in ("owner", "server")} for p in PHASES}
    total = {role: sum(run[role][p]["bytes"] for p in run[role]) for role in ("owner", "server")}
    rounds = {role: sum(run[role][p]["rounds"] for p in run[role]) for role in ("owner", "server")}
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
    from secptune.arch import arch_from_config

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
        timeout=args.timeout, range_samples=256,  # the product's default range check
    )
    f = bf.run(fargs)

    def fields(comm: dict, wall_s: float) -> dict:
        return {
            "bytes": max(c["bytes"] for c in comm.values()),
            "rounds": max(c["rounds"] for c in comm.values()),
            "forward_s": round(wall_s, 3),
            "backward_s": 0.0,
        }

    online = {role: f["comm"][role]["online"] for role in ("owner", "server")}
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
        raise bf.BenchError(f"--method must be one of {', '.join(METHODS)}")
    out = forward_method(args) if args.method.startswith("fot-") else gradient_method(args)
    kernel = os.environ.get("MPC_RING_MATMUL")
    out.update(model=args.model, seq=args.seq, batch=args.batch, machine=bf.machine_info())
    out["command"] = (f"MPC_RING_MATMUL={kernel} " if kernel else "") + "scripts/bench_iteration.py " + " ".join(sys.argv[1:])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--model", required=True, help=f"built-in name, checkpoint directory, or {bf.ROBERTA_LARGE}")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, help="run the first L layers (and L+1, or 0) and extrapolate to the full depth")
    p.add_argument("--prompt-len", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help=f"{bf.ROBERTA_LARGE} only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-step", action="store_true", help="gradient methods: stop after the backward pass (no Adam step)")
    p.add_argument("--timeout", type=float, default=6 * 3600.0)
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        print("--layers must be at least 1", file=sys.stderr)
        return 2
    try:
        out = run(args)
    except bf.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(out, indent=None if args.json else 2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json or not args.out:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
