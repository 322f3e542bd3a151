"""The options of ``secptune bench forward|iteration|net`` (no torch, no CrypTen: parsing stays fast)."""

from __future__ import annotations

import argparse

ROBERTA_LARGE = "roberta-large-shape"
METHODS = ("sft", "prompt-grad", "fot-softmax", "fot-rfa")
SETTINGS = ("none", "LAN", "WAN", "WAN-200")  # secptune.bench.net: emulated links (mpc.costmodel)


def _forward(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"built-in name, checkpoint directory, or {ROBERTA_LARGE}")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="secure", choices=("secure", "plain"))
    p.add_argument("--attention", default="softmax", choices=("softmax", "rfa"))
    p.add_argument("--features", default="positive",
                   help="RFA feature map: positive, fourier, or fitted (the product's default: the server's fitted "
                        "maps in the layers it chooses, softmax in the rest)")
    p.add_argument("--num-features", type=int, default=64, help="RFA random features per head")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--layers", type=int, default=None, help="run only the first N layers (and extrapolate)")
    p.add_argument("--vocab", type=int, default=4096, help=f"vocabulary of {ROBERTA_LARGE}")
    p.add_argument("--prompt-len", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-repeat", type=int, default=3, help="plain forward: best of this many runs")
    p.add_argument("--no-fixed-weights", action="store_true", help="CrypTen's Beaver products (the 'before')")
    p.add_argument("--range-samples", type=int, default=256,
                   help="sampled range check: inputs tested per ranged call (0: no check; mpc.approx.ApproxConfig)")
    p.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds before the secure run is stopped")
    p.add_argument("--profile", action="store_true",
                   help="secure: per-party time split (cProfile top entries of owner, server, dealer) under 'profile'")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the JSON to this file")


def _iteration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--model", required=True, help=f"built-in name, checkpoint directory, or {ROBERTA_LARGE}")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, help="run the first L layers (and L+1, or 0) and extrapolate to the full depth")
    p.add_argument("--prompt-len", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096, help=f"{ROBERTA_LARGE} only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-step", action="store_true", help="gradient methods: stop after the backward pass (no Adam step)")
    p.add_argument("--timeout", type=float, default=6 * 3600.0)
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--out", help="also write the JSON report here")


def _net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--limit", type=int, default=4, help="infer examples (one batch)")
    p.add_argument("--popsize", type=int, default=4)
    p.add_argument("--out", help="append one JSON line per setting here")
    p.add_argument("--table", help="only print the table of a JSON-lines file written by --out")


BENCHMARKS = {
    "forward": (_forward, "time and count one secure (or plaintext) forward pass of a model",
                "Bytes, rounds and time per op of one forward after the session is set up; with --layers N, "
                "extrapolated to the full depth. See secptune/bench/forward.py."),
    "iteration": (_iteration, "one tuning iteration under MPC per method (forward-only vs gradient baselines)",
                  "fot-softmax/fot-rfa: one secure forward; sft/prompt-grad: forward, backward and an Adam step "
                  "on shares. See secptune/bench/iteration.py."),
    "net": (_net, "a secure forward and one tuning generation over emulated LAN/WAN links (root)",
            "Owner, server and dealer in their own network namespaces, measured against the cost model. "
            "Needs root (network namespaces). See secptune/bench/net.py and docs/deployment.md."),
}


def add_bench(sub) -> None:
    """``secptune bench NAME``: one subcommand per benchmark; each report records its command,
    git revision and machine."""
    bench = sub.add_parser("bench", help="benchmarks: forward | iteration | net (JSON reports)")
    names = bench.add_subparsers(dest="bench", required=True)
    for name, (add, summary, description) in BENCHMARKS.items():
        add(names.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}"))
