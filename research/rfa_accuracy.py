"""Tuned accuracy of exact softmax, the secure run's softmax approximations and the default RFA
(issue 26's acceptance), from the runs of ``scripts/rfa_accuracy.sh WORK``.

The bar, stated before the runs: on each task, at one budget, exact tuning gains (SST-2: >= 5 points
over zero-shot) and both approximations' tuned test accuracy is within 1 point of exact's; the SST-2
rfa prompt scored in secure mode gives its float64 oracle's prediction on >= 99 of 100 test sentences.
A run cut off by its time limit is reported with the calls it made (``complete``: false).

    python -m research.rfa_accuracy WORK [--out reports/rfa_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secptune.bench.common import SOURCE_ROOT, command_line, provenance

OUT = SOURCE_ROOT / "reports" / "rfa_accuracy.json"
CONFIGS = ("exact", "softmax", "rfa")
WITHIN = 0.01  # approximations vs exact, tuned test accuracy
SST2_GAIN = 0.05  # exact tuning's gain over zero-shot that makes the budget one "that gains"
AGREEMENT = 0.99  # secure vs oracle predictions on the secure check
SCORE_TOLERANCE = 0.01  # relative to the row's largest oracle score (fixed point + float64 vs float32: ~2e-3 seen)


def run_figures(run: Path) -> dict | None:
    path = run / "report.json"
    if not path.is_file():
        return started_figures(run)
    r = json.loads(path.read_text())
    test = r["final"]["test"]
    return {"model": r["config"]["model"], "api_calls": r["totals"]["api_calls"], "budget": r["config"]["budget"],
            "complete": r["totals"]["api_calls"] >= r["config"]["budget"], "zero_shot": test["zero_shot"],
            "tuned": test["tuned"], "gain": test["tuned"] - test["zero_shot"], "test_examples": r["config"]["test_limit"],
            "device": r["config"]["device"], "wall_s": r["totals"]["wall_s"], "stopped": r["final"]["stopped"],
            "attention": r["final"].get("attention")}


def started_figures(run: Path) -> dict | None:
    """A run whose first piece was stopped before its test (no report yet): its calls so far,
    from the checkpoint; None when it never started."""
    path = run / "checkpoint.pt"
    if not path.is_file():
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = state["config"]
    return {"model": cfg["model"], "api_calls": state["gen"] * cfg["popsize"], "budget": cfg["budget"],
            "complete": False, "tested": False, "test_examples": cfg["test_limit"], "device": cfg["device"]}


def task_figures(work: Path, task: str) -> dict:
    runs = {c: run_figures(work / "tune" / f"{task}-{c}") for c in CONFIGS}
    out: dict = {"runs": runs}
    exact = runs["exact"]
    if exact is not None:  # verdicts only between whole budgets (None: pending); differences as they stand
        n = exact["test_examples"]
        out["exact_gains"] = examples(exact["gain"], n) >= examples(SST2_GAIN if task == "sst2" else 0.0, n) if exact["complete"] else None
        for c in ("softmax", "rfa"):
            if runs[c] is not None and runs[c].get("tested", True):
                out[f"{c}_vs_exact"] = runs[c]["tuned"] - exact["tuned"]
                out[f"{c}_within"] = (abs(examples(runs[c]["tuned"] - exact["tuned"], n)) <= examples(WITHIN, n)
                                      if exact["complete"] and runs[c]["complete"] else None)
    return out


def examples(accuracy: float, n: int) -> int:
    """An accuracy (or a difference of two) on ``n`` test examples as a count of examples: the bars
    compare counts, so 0.62 against 0.63 on 500 (5 examples) is within 1 point, as it reads, not
    0.010000000000000009 > 0.01."""
    return round(accuracy * n)


def secure_check(work: Path) -> dict | None:
    """The secure run's scores beside its float64 oracle's.  A sentence agrees when its label comes out
    the same *and* its scores are within ``SCORE_TOLERANCE`` of the oracle's: a wrapped secure value can
    give any scores, and with two labels half of those still pick the oracle's label by chance."""
    paths = [work / name / "result.json" for name in ("secure_check", "oracle_check")]
    if not all(p.is_file() for p in paths):
        return None
    secure, oracle = (json.loads(p.read_text()) for p in paths)
    rows = list(zip(secure["pred"], oracle["pred"], secure["scores"], oracle["scores"]))
    same = [a == b for a, b, *_ in rows]
    off = [i for i, (_, _, s, o) in enumerate(rows) if max(abs(a - b) for a, b in zip(s, o)) > SCORE_TOLERANCE * max(map(abs, o))]
    agree = sum(same) - sum(same[i] for i in off)
    return {"examples": len(rows), "same_prediction": sum(same), "scores_off": off,
            "agree": agree, "agreement": agree / len(rows), "meets_bar": agree / len(rows) >= AGREEMENT,
            "score_tolerance": SCORE_TOLERANCE, "secure_accuracy": secure["accuracy"], "oracle_accuracy": oracle["accuracy"],
            "secure_wall_s": secure["wall_s"], "range_events": secure.get("range_events"),
            "oracle_range_warnings": oracle.get("range_warnings")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", help="the WORK directory of scripts/rfa_accuracy.sh")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    work = Path(args.work)
    if not (work / "tune").is_dir():
        raise SystemExit(f"{work}: no tune/ directory; run `bash scripts/rfa_accuracy.sh {work} MINUTES` first")
    argv = list(sys.argv[1:] if argv is None else argv)
    report = {**provenance(command_line(argv, ("python", "-m", "research.rfa_accuracy"))),
              "question": "tuned accuracy of exact softmax, softmax approximations and the default RFA (issue 26)",
              "bar": {"within": WITHIN, "sst2_gain": SST2_GAIN, "secure_agreement": AGREEMENT},
              "tasks": {t: task_figures(work, t) for t in ("sst2", "agnews")}, "secure_check": secure_check(work)}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["tasks"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
