"""How long the server's preparation of a model takes from a cold cache (issue 26: ≤ 10 min
for SmolLM2 on the 2-core CPU).

Runs ``secptune prepare --model M --json`` in a fresh cache directory that holds only the
converted model (no public text, no fits, no choice, no bounds), so every stage is timed as a
new server would pay it, and writes the stages' seconds, the RFA layers chosen and the machine
to ``reports/prepare/<model>.json`` and ``.md``.

    python -m research.prepare_time --model smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from secptune.bench.common import git_revision, machine_info
from secptune.checkpoints import cache_dir


def measure(model: str, attention: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="secptune-prepare-") as fresh:
        (Path(fresh) / "models").symlink_to(cache_dir() / "models")  # the converted weights only
        env = {**os.environ, "SECPTUNE_CACHE": fresh}
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "secptune", "prepare", "--model", model, "--attention", attention,
                               "--json"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"secptune prepare failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        left = sorted(str(p.relative_to(fresh)) for p in Path(fresh).iterdir() if p.name != "models")
    commit, dirty = git_revision()
    # the CPU's vector width matters here: every stage ran 2.3-2.7x slower on an AVX2 machine than on an AVX512 one
    machine = {**machine_info(), "load_avg_1m_before": round(load, 2)}
    machine["load_avg_1m_after"] = machine.pop("load_avg_1m")  # read once, after the run
    return {
        "question": f"the server's preparation of {model} ({attention}) from a cold cache (issue 26: <= 10 min)",
        "command": f"python -m research.prepare_time --model {model} --attention {attention}",
        "git_revision": commit,
        "git_dirty": dirty,
        "machine": machine,
        "command_wall_s": round(wall, 1),
        "cache_entries_made": left,
        **result,
    }


def markdown(report: dict) -> str:
    stages = "\n".join(f"| {name} | {seconds:,.1f} |" for name, seconds in report["stages_s"].items())
    return (f"# {report['question']}\n\n`{report['command']}` at {report['git_revision']}, "
            f"{report['machine']['cpu_count']} CPUs, load {report['machine']['load_avg_1m_before']} before\n\n"
            f"| stage | seconds |\n|---|---|\n{stages}\n| **whole command** | **{report['command_wall_s']:,.1f}** |\n\n"
            f"RFA in {len(report['rfa_layers'])} of {report['layers']} layers: {report['rfa_layers']} "
            f"(KL {report['choice_kl']} nats/token on the server's held-out public text)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--attention", default="rfa", choices=["rfa", "softmax"])
    ap.add_argument("--out", default="reports/prepare")
    args = ap.parse_args()
    if not (cache_dir() / "models").is_dir():
        raise SystemExit(f"no converted models in {cache_dir() / 'models'}: run `secptune prepare --model "
                         f"{args.model}` once (or any command on it) first")
    report = measure(args.model, args.attention)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.model}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{args.model}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
