"""One secure API call at BBT size, old code vs new vs HF float32, in one run (issue 23's acceptance).

An API call scores one candidate prompt on the training texts: SmolLM2, SST-2, k = 16 (32 texts),
prompt length 10.  `secptune infer --limit 32 --batch-size 32 --prompt-len 10` is exactly that call
(one batch of 32 texts, one random prompt), so this runs it back to back as

    plain exact (HF float32) · secure (this tree) · secure (an old checkout) · plain exact

and records each command's wall time (this script's clock around the process), the secure runs'
own forward time and traffic, and the 1-minute load average before each run: timings on a shared
2-core machine are only comparable within one run, so every ratio comes from the same run.

    python -m research.call_speed --old /path/to/checkout-at-44956d7 --out reports/speed/call_acceptance
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from secptune.bench.common import git_revision

CALL = ["infer", "--task", "sst2", "--model", "smollm2", "--limit", "32", "--batch-size", "32", "--prompt-len", "10",
        "--json"]


def _run(name: str, tree: Path, mode: list[str], out: Path, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "secptune", *CALL, *mode]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[2:])} (in {tree}, load {load:.2f})", flush=True)
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"run": name, "tree": str(tree), "error": f"timed out after {timeout_s:g} s", "load_before": load}
    wall = time.perf_counter() - started
    (out / f"{name}.log").write_text(done.stderr[-20000:])
    row = {"run": name, "tree": str(tree), "command": " ".join(["secptune", *CALL, *mode]), "wall_s": round(wall, 2),
           "load_before": round(load, 2), "returncode": done.returncode}
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("secptune: error:")]
        row["error"] = errors[-1] if errors else (done.stderr.strip().splitlines() or ["failed"])[-1]
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    row["forward_s"] = result.get("forward_s")
    row["accuracy"] = result.get("accuracy")
    comm = result.get("comm") or {}
    if "online" in comm.get("server", {}):
        row["online_bytes_per_party"] = comm["server"]["online"]["bytes"]
        row["online_rounds"] = comm["owner"]["online"]["rounds"]
        row["dealer_bytes"] = comm["dealer"]["bytes"]
    row["range_events"] = result.get("range_events")
    print(f"    {wall:.1f} s", flush=True)
    return row


def _summary(rows: list[dict]) -> str:
    by = {r["run"]: r for r in rows}
    plain = [r["wall_s"] for r in rows if r["run"].startswith("plain") and "wall_s" in r and "error" not in r]
    lines = ["| run | wall s | forward s | online GB / party | dealer GB | load before |", "|---|---|---|---|---|---|"]
    for r in rows:
        gb = lambda k: f"{r[k] / 1e9:.2f}" if r.get(k) is not None else "—"  # noqa: E731
        wall = f"failed after {r.get('wall_s', '?')} s: {r['error']}" if "error" in r else r.get("wall_s")
        lines.append(f"| {r['run']} | {wall} | {r.get('forward_s') or '—'} | "
                     f"{gb('online_bytes_per_party')} | {gb('dealer_bytes')} | {r['load_before']} |")
    new, old = by.get("secure_new", {}), by.get("secure_old", {})
    if "wall_s" in new and plain:
        lines.append(f"\nsecure (new) / plain exact: {new['wall_s'] / min(plain):.1f}x (fastest plain) – "
                     f"{new['wall_s'] / max(plain):.1f}x (slowest plain)")
    if "wall_s" in new and "wall_s" in old and "error" not in old:
        lines.append(f"old / new secure: {old['wall_s'] / new['wall_s']:.2f}x by command wall time")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="checkout of the old code (e.g. a worktree at 44956d7)")
    ap.add_argument("--out", default="reports/speed/call_acceptance")
    ap.add_argument("--timeout", type=float, default=5400, help="seconds per secure run")
    ap.add_argument("--peer-timeout", type=float, default=1800,
                    help="the secure runs' --peer-timeout: the old code's 60 s default aborts a call whose dealer is "
                         "starved of CPU for a minute")
    ap.add_argument("--order", default="plain_exact_1,secure_new,secure_old,plain_exact_2",
                    help="the runs, in the order to make them")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new_tree, old_tree = Path.cwd(), Path(args.old).resolve()
    secure = ["--mode", "secure", "--peer-timeout", f"{args.peer_timeout:g}"]
    runs = {"plain_exact_1": (new_tree, ["--mode", "plain", "--exact"]), "secure_new": (new_tree, secure),
            "secure_old": (old_tree, secure), "plain_exact_2": (new_tree, ["--mode", "plain", "--exact"])}
    plan = [(name, *runs[name]) for name in args.order.split(",")]
    rows = []
    for name, tree, mode in plan:
        rows.append(_run(name, tree, mode, out, args.timeout if "secure" in name else 900))
        report = {"question": "one SmolLM2 API call (32 SST-2 texts, prompt 10): secure new vs old vs plain exact",
                  "commit_new": git_revision(new_tree)[0], "commit_old": git_revision(old_tree)[0],
                  "machine": {"cpu_count": os.cpu_count()}, "runs": rows}
        (out / "call_speed.json").write_text(json.dumps(report, indent=1))
        (out / "call_speed.md").write_text(_summary(rows))
    print(_summary(rows))


if __name__ == "__main__":
    main()
