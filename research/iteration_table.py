#!/usr/bin/env python
"""The four-row per-iteration comparison (issue: baselines under MPC) next to the paper's figures.

    python -m research.iteration_table --sft FILE --prompt-grad FILE --fot-softmax FILE --fot-rfa FILE
        [--out reports/iteration_table_seq512.json]

Inputs: ``research/bench_seqfit.py`` reports for the gradient methods (bytes and rounds at the target
length computed exactly; times as measured at the longest length run, plus the Adam step) and ``secptune bench iteration`` reports for the
forward-only methods (measured at the target length).  Writes JSON and prints a Markdown table with
our figures, the paper's, and both ratios against forward-only RFA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secptune.bench.iteration import full_depth

# SecP-Tuning (arXiv 2506.15307), RoBERTa-large, seq 512, per iteration: seconds, GB
PAPER = {
    "sft": (651.6, 970.7),
    "prompt-grad": (882.1, 1116.2),
    "fot-softmax": (174.1, 205.4),
    "fot-rfa": (55.2, 56.6),
}
LABELS = {
    "sft": "SFT (all weights, Adam)",
    "prompt-grad": "gradient prompt tuning",
    "fot-softmax": "forward-only, softmax",
    "fot-rfa": "forward-only, RFA",
}


def gradient_row(report: dict) -> dict:
    """Bytes and rounds at the target length (exact); times measured at the longest run length (a
    fit of times taken on a shared machine is not worth quoting)."""
    row, step = report["target_row"], report["step"] or {}
    longest = max(report["measured"], key=int)
    times = report["measured"][longest]
    return {
        "bytes": row["bytes"], "rounds": row["rounds"], "forward_s": times["forward_s"],
        "backward_s": round(times["backward_s"] + step.get("step_s", 0.0), 1), "time_seq": int(longest),
        "source": report["command"], "seq": report["fit"]["target"],
    }


def forward_row(report: dict) -> dict:
    total = full_depth(report)
    return {
        "bytes": int(total["bytes"]), "rounds": int(total["rounds"]), "forward_s": total["forward_s"], "backward_s": 0.0,
        "time_seq": report["seq"], "source": report["command"], "seq": report["seq"],
    }


def build(paths: dict[str, str]) -> dict:
    rows = {}
    for method, path in paths.items():
        report = json.loads(Path(path).read_text())
        rows[method] = gradient_row(report) if method in ("sft", "prompt-grad") else forward_row(report)
        rows[method]["paper_s"], rows[method]["paper_gb"] = PAPER[method]
    base = rows["fot-rfa"]
    for row in rows.values():
        row["x_fot_rfa_bytes"] = round(row["bytes"] / base["bytes"], 1)
        row["paper_x_fot_rfa_bytes"] = round(row["paper_gb"] / PAPER["fot-rfa"][1], 1)
        row["paper_over_ours_bytes"] = round(row["paper_gb"] * 1e9 / row["bytes"], 1)
    return {"rows": rows, "seq": {m: r["seq"] for m, r in rows.items()}}


def markdown(table: dict) -> str:
    lines = [
        "| method | online GB / iteration | rounds | forward s | backward + step s | (times at seq) | × fot-RFA bytes "
        "| paper s / GB | paper × fot-RFA | paper ÷ ours (bytes) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in table["rows"].items():
        lines.append(
            f"| {LABELS[method]} | {r['bytes'] / 1e9:,.2f} | {r['rounds']:,} | {r['forward_s']:,.0f} | "
            f"{r['backward_s']:,.0f} | {r['time_seq']} | {r['x_fot_rfa_bytes']}× | {r['paper_s']} / {r['paper_gb']} | "
            f"{r['paper_x_fot_rfa_bytes']}× | {r['paper_over_ours_bytes']}× |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for method in PAPER:
        p.add_argument(f"--{method}", required=True, dest=method.replace("-", "_"))
    p.add_argument("--out", default="reports/iteration_table_seq512.json")
    args = p.parse_args(argv)
    table = build({m: getattr(args, m.replace("-", "_")) for m in PAPER})
    if len(set(table["seq"].values())) != 1:
        print(f"error: the reports are for different lengths: {table['seq']}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    text = markdown(table)
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
