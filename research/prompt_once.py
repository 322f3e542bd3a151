"""What running each prompt once saves a plain session (``Transformer._forward_prompt_first``).

A causal model's prompt comes first, so its rows never see the text; a plain session runs each of a
call's R candidate prompts once and the R·B texts attend to their keys/values.  This times one API call
(R candidates on the k-shot training texts) both ways in one process, alternating, and checks the
scores agree.  The secure forward keeps every row in one pass (its rounds would nearly double).

    python -m research.prompt_once [--task sst2] [--k 4] [--popsize 10] [--prompt-len 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mpc import approx
from secptune.batch import population_inputs
from secptune.bench.common import SOURCE_ROOT, command_line, provenance
from secptune.plain import plain_session
from secptune.tune import TuneConfig
from secptune.tune_job import build_texts

OUT = SOURCE_ROOT / "reports" / "speed" / "prompt_once.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    runs = []
    session = None
    for P in args.prompt_len:
        cfg = TuneConfig(task=args.task, model=args.model, mode="plain", precision="float32", k=args.k, prompt_len=P)
        model_dir, texts, _ = build_texts(cfg)
        if session is None:
            session = plain_session(model_dir, texts.verbalizer, approx.ApproxConfig(), precision="float32")
        embeds, loaded, _ = session.texts[session.load_texts(texts.train)]  # the call's texts, with P prompt slots
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randn(args.popsize, P, embeds.size(-1), generator=gen).to(embeds.dtype) * 0.1
        e, b = population_inputs(embeds, loaded, prompts)
        times: dict[str, list[float]] = {"once": [], "every_text": []}
        scores = {}
        with torch.no_grad():
            for _ in range(args.repeats):
                for name, batch in (("once", b), ("every_text", replace(b, shared_prompt=None))):
                    started = time.perf_counter()
                    scores[name] = session.model.forward(e, batch, session.head)
                    times[name].append(time.perf_counter() - started)
        ref = scores["every_text"].double()
        runs.append({"prompt_len": P, "candidates": args.popsize, "sequences": int(e.size(0)), "rows_per_sequence": int(e.size(1)),
                     "prompt_once_used": b.prompt_start == 0, "seconds_once": statistics.median(times["once"]),
                     "seconds_every_text": statistics.median(times["every_text"]),
                     "speedup": statistics.median(times["every_text"]) / statistics.median(times["once"]),
                     "max_rel_score_diff": float((scores["once"].double() - ref).abs().max() / ref.abs().max())})
        print(runs[-1], flush=True)
    report = {**provenance(command_line(argv, ("python", "-m", "research.prompt_once"))), "task": args.task,
              "model": args.model, "k": args.k, "threads": torch.get_num_threads(), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
