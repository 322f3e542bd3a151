"""Bytes and rounds of a gradient baseline's iteration at a long sequence, computed exactly from short runs.

    python -m research.bench_seqfit --method sft|prompt-grad --model roberta-large-shape [--fit 16 32 64 128]
        [--check 256] [--target 512] [--layers 1] [--step-from REPORT] [--keep DIR] --out FILE

Why: a 512-token SFT or gradient-prompt-tuning iteration under MPC takes hours on a small CPU, but its
traffic does not depend on the data, only on shapes.  Every secret-shared op on an [n, ·] or [n, n]
tensor moves a fixed number of bytes per element, so bytes are α + β·n + γ·n² — except CrypTen's
softmax max, which halves each row int(ln n) times and then compares the m remaining entries pairwise
(m = 4 for n = 16…64, 8 for n = 128…512): that adds a per-row cost h(m), so β depends on m, and rounds
are a_m + b·int(ln n).  The script measures forward + backward (``--no-step``) at the ``--fit`` lengths,
solves for the unknowns exactly in rational arithmetic, **checks the prediction against the ``--check``
runs** (exit 1 if any byte or round count differs) and predicts ``--target``.  The Adam step's cost
depends on the trained tensors' sizes only; ``--step-from`` adds it from a full run
(``secptune bench iteration`` without ``--no-step``).  Times are data-independent too but not exact on a
shared machine: the report gives them as measured per length, with no extrapolation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

from mpc.roles import COMPUTING
from research import command
from secptune.bench import iteration as bi
from secptune.bench.common import provenance

PHASES = ("forward", "backward")


def counts(report: dict) -> dict:
    """Per phase and party, bytes and rounds of the full-depth (extrapolated) iteration."""
    total = bi.full_depth(report)
    return {
        p: {r: {k: total["phases"][p][r][k] for k in ("bytes", "rounds")} for r in COMPUTING} for p in PHASES
    } | {"forward_s": total["forward_s"], "backward_s": total["backward_s"] - total.get("step_s", 0.0)}


def halvings(n: int) -> int:
    """How often CrypTen's log-reduction max halves a row of n entries: int(ln n)."""
    return int(math.log(n))


def reduced_width(n: int) -> int:
    """What that max leaves for its pairwise step."""
    return n >> halvings(n)


def basis(kind: str, n: int, widths: list[int]) -> list[Fraction]:
    """The model's terms at length n.  CrypTen's softmax max halves each row int(ln n) times and
    compares the remaining m = reduced_width(n) entries pairwise, so per row it costs
    c·(n − m) + h(m): bytes = α + γ·n² + β_m·n (β_m one unknown per width m), rounds = a_m + b·halvings."""
    m = reduced_width(n)
    onehot = [Fraction(int(m == w)) for w in widths]
    if kind == "bytes":
        return [Fraction(1), Fraction(n * n)] + [x * n for x in onehot]
    return [Fraction(halvings(n))] + onehot


def solve_exact(rows: list[list[Fraction]], values: list[int]) -> list[Fraction]:
    """Least squares in rationals (normal equations, Gauss-Jordan): exact when the model is."""
    size = len(rows[0])
    m = [[sum(r[i] * r[j] for r in rows) for j in range(size)] + [sum(r[i] * Fraction(v) for r, v in zip(rows, values))]
         for i in range(size)]
    for col in range(size):
        pivot = next((r for r in range(col, size) if m[r][col] != 0), None)
        if pivot is None:
            raise SystemExit("the fit lengths do not determine the model: add a length")
        m[col], m[pivot] = m[pivot], m[col]
        m[col] = [x / m[col][col] for x in m[col]]
        for r in range(size):
            if r != col and m[r][col] != 0:
                m[r] = [a - m[r][col] * b for a, b in zip(m[r], m[col])]
    return [m[r][-1] for r in range(size)]


def fit_exact(kind: str, lengths: list[int], values: list[int], widths: list[int]) -> list[Fraction]:
    return solve_exact([basis(kind, n, widths) for n in lengths], values)


def predict(kind: str, coef: list[Fraction], n: int, widths: list[int]) -> Fraction:
    return sum(c * b for c, b in zip(coef, basis(kind, n, widths)))


def measure(args, seq: int) -> dict:
    kept = Path(args.keep) / f"{args.method}_seq{seq}.json" if args.keep else None
    if kept is not None and kept.exists():
        print(f"[seqfit] {args.method} seq {seq}: reusing {kept}", file=sys.stderr, flush=True)
        return json.loads(kept.read_text())
    print(f"[seqfit] {args.method} seq {seq}: running ...", file=sys.stderr, flush=True)
    ns = argparse.Namespace(
        method=args.method, model=args.model, seq=seq, batch=1, layers=args.layers, prompt_len=args.prompt_len,
        vocab=args.vocab, seed=args.seed, timeout=args.timeout, no_step=True,
    )
    report = bi.run(ns)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(report) + "\n")
    return report


def analyse(args, measured: dict[int, dict]) -> dict:
    fit_n, check_n = args.fit, args.check
    widths = sorted({reduced_width(n) for n in fit_n})
    if reduced_width(args.target) not in widths:
        raise SystemExit(f"no fit length shares the target's max width {reduced_width(args.target)}")
    out: dict = {"fit_lengths": fit_n, "check_lengths": check_n, "target": args.target, "max_widths": widths,
                 "phases": {}, "checks": []}
    for p in PHASES:
        out["phases"][p] = {}
        for r in COMPUTING:
            entry = {}
            for kind in ("bytes", "rounds"):
                values = [measured[n][p][r][kind] for n in fit_n]
                coef = fit_exact(kind, fit_n, values, widths)
                for n in fit_n + check_n:
                    got, want = measured[n][p][r][kind], predict(kind, coef, n, widths)
                    out["checks"].append({"phase": p, "party": r, "kind": kind, "seq": n, "measured": got,
                                          "predicted": str(want), "exact": want == got, "fitted": n in fit_n})
                value = predict(kind, coef, args.target, widths)
                entry[kind] = {"coefficients": [str(c) for c in coef], "at_target": str(value)}
                if value.denominator != 1:
                    entry[kind]["warning"] = "prediction is not an integer: the model does not fit"
            out["phases"][p][r] = entry
    out["all_checks_exact"] = all(c["exact"] for c in out["checks"])
    return out


def step_counts(path: str | None) -> dict | None:
    if not path:
        return None
    total = bi.full_depth(json.loads(Path(path).read_text()))
    step = total["phases"]["step"]
    return {"from": path, "bytes": max(step[r]["bytes"] for r in COMPUTING), "rounds": max(step[r]["rounds"] for r in COMPUTING),
            "step_s": total["step_s"]}


def table_row(fit: dict, step: dict | None) -> dict:
    """The iteration at the target length: forward + backward (+ the Adam step), max over parties."""
    def at(p, kind):
        return max(int(Fraction(fit["phases"][p][r][kind]["at_target"])) for r in COMPUTING)

    row = {p: {k: at(p, k) for k in ("bytes", "rounds")} for p in PHASES}
    row["bytes"] = sum(row[p]["bytes"] for p in PHASES) + (step["bytes"] if step else 0)
    row["rounds"] = sum(row[p]["rounds"] for p in PHASES) + (step["rounds"] if step else 0)
    row["step_included"] = step is not None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=("sft", "prompt-grad"))
    p.add_argument("--model", required=True)
    p.add_argument("--fit", type=int, nargs="+", default=[16, 32, 64, 128], help="powers of two")
    p.add_argument("--check", type=int, nargs="*", default=[256], help="lengths the exact prediction must match")
    p.add_argument("--target", type=int, default=512)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=6 * 3600.0)
    p.add_argument("--step-from", help="a full `secptune bench iteration` report whose Adam step is added")
    p.add_argument("--keep", help="directory for each run's `secptune bench iteration` report (reused when present)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    for n in args.fit + args.check + [args.target]:
        if n & (n - 1):
            print(f"error: length {n} is not a power of two (the round model assumes full comparison trees)", file=sys.stderr)
            return 2
    measured = {}
    for n in sorted(set(args.fit + args.check)):
        measured[n] = counts(measure(args, n))
    fit = analyse(args, measured)
    step = step_counts(args.step_from)
    out = {
        "method": args.method, "model": args.model, "layers_run": args.layers, "fit": fit, "step": step,
        "target_row": table_row(fit, step), "measured": {str(n): m for n, m in measured.items()},
        **provenance(command("research.bench_seqfit", argv)),
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    row = out["target_row"]
    print(f"{args.method} at seq {args.target}: {row['bytes'] / 1e9:.2f} GB, {row['rounds']} rounds "
          f"(checks exact: {fit['all_checks_exact']})")
    return 0 if fit["all_checks_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
