"""What one tuning API call costs each configuration of issue 26's accuracy runs, this tree vs another.

One call scores one generation (``--popsize`` candidates, prompt 50) on the k-shot training texts of a
task, as `secptune tune` does, through the scoring interface only — so any checkout can run it:
``exact`` (transformers float32), ``softmax`` and ``rfa`` (the secure run's approximations in float32).
With ``--old TREE`` the same calls run in a process on that checkout too, alternating old/new per
configuration (timings on a shared 2-core machine compare only within one run), and the scores of
both trees are compared (new code must give the old scores to float32 rounding).

    python -m research.tuning_call --old /path/to/old-checkout [--task sst2] [--threads 1]
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

import torch

CONFIGS = ("exact", "softmax", "rfa")


def _session(config: str, model_dir, verbalizer):
    from mpc import approx
    from rfa.config import attention_config
    from secptune.hf_session import HFSession
    from secptune.plain import plain_session

    if config == "exact":
        return HFSession(model_dir, verbalizer)
    return plain_session(model_dir, verbalizer, approx.ApproxConfig(), attention_config(config), precision="float32")


def measure(config: str, task: str, popsize: int, calls: int, threads: int, scores_out: str) -> dict:
    """This process's tree: seconds per call (``calls`` calls after one warm-up) of one configuration."""
    from secptune.tune import TuneConfig
    from secptune.tune_job import build_texts

    torch.set_num_threads(threads)
    model_dir, texts, _ = build_texts(TuneConfig(task=task, model="smollm2", mode="plain", k=16, prompt_len=50))
    session = _session(config, model_dir, texts.verbalizer)
    text_id = session.load_texts(texts.train)
    hidden = texts.train.prompt.shape[-1]
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randn(popsize, 50, hidden, generator=gen, dtype=torch.float64) * session.embedding_std
    got = session.scores(text_id, prompts)  # warm-up (and the scores compared across trees)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.scores(text_id, prompts)
        times.append(time.perf_counter() - started)
    torch.save(got, scores_out)
    return {"config": config, "seconds_per_generation": min(times), "seconds_per_call": min(times) / popsize,
            "sequences": int(got.size(0)), "threads": threads}


def _in_tree(tree: Path, config: str, args, scores_out: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", config, "--task", args.task,
               "--popsize", str(args.popsize), "--calls", str(args.calls), "--threads", str(args.threads),
               "--scores", scores_out]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"tuning_call: {config} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _commit(tree: Path) -> str:
    from secptune.bench.common import git_revision

    commit, dirty = git_revision(tree)
    return f"{commit} with uncommitted changes" if dirty else str(commit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="a checkout of the code to compare with")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--calls", type=int, default=2, help="timed generations per configuration (the fastest counts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--scores", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="reports/speed/tuning_call")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.task, args.popsize, args.calls, args.threads, args.scores)))
        return 0
    from secptune.bench.common import machine_info

    trees = {"new": Path.cwd()} | ({"old": Path(args.old).resolve()} if args.old else {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            row = {"config": config}
            for name, tree in trees.items():
                print(f"[{time.strftime('%H:%M:%S')}] {config} on the {name} tree ...", flush=True)
                row[name] = _in_tree(tree, config, args, f"{tmp}/{name}.pt")
            if "old" in trees:
                new, old = torch.load(f"{tmp}/new.pt"), torch.load(f"{tmp}/old.pt")
                row["max_rel_score_diff"] = float((new - old).abs().max() / old.abs().max())
                row["speedup"] = row["old"]["seconds_per_call"] / row["new"]["seconds_per_call"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"question": "seconds per tuning API call (SmolLM2, k 16, prompt 50), per configuration",
              "task": args.task, "popsize": args.popsize, "threads": args.threads,
              "commits": {name: _commit(tree) for name, tree in trees.items()},
              "machine": machine_info(), "rows": rows}
    out = Path(f"{args.out}_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
