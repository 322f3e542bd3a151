"""How much of a tuned prompt's gain survives RFA in the first n layers of the server's ranking.

Issue 26's SST-2 runs tuned the default RFA (the server's 11 layers) to 4.6 points below exact
tuning.  Is that the search (a rougher landscape) or the approximation itself?  This scores one
tuned prompt (e.g. exact tuning's) on the first ``--test`` test examples under the secure run's
approximations in float32 with RFA in the n least damaging layers (the server's own ranking on
public text, ``secptune.server.layer_choice``) for each n of ``--layers``, softmax elsewhere, and
under exact transformers.  Inference only: minutes per n, where a tuning run per n takes hours.

    python -m research.rfa_prompt_transfer PROMPT [--task sst2] [--test 500] [--layers 0,4,8,11]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mpc import approx
from rfa.config import DEFAULT_RFA
from secptune.bench.common import command_line, provenance
from secptune.checkpoints import load_hf_model
from secptune.hf_session import HFSession
from secptune.plain import plain_session
from secptune.tune import TuneConfig, score_on_test
from secptune.tune_job import build_texts


def server_ranking(model_dir) -> dict:
    """The server's prepared choice for the default RFA: its layers and its ranking by damage."""
    from secptune.server.prepare import prepare_server_model

    return prepare_server_model(load_hf_model(model_dir), DEFAULT_RFA).choice


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt", help="a tuned prompt [P, H] (.pt), e.g. a tune run's prompt.pt")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--layers", default="0,4,8,11", help="numbers of RFA layers (the server's least damaging first)")
    ap.add_argument("--out", default="reports/rfa_accuracy/prompt_transfer.json")
    args = ap.parse_args(argv)
    prompt = torch.load(args.prompt, weights_only=True).double()
    model_dir, texts, _ = build_texts(TuneConfig(task=args.task, model=args.model, mode="plain", k=16,
                                                 prompt_len=prompt.size(0), test_limit=args.test))
    choice = server_ranking(model_dir)
    order = choice["order"]
    rows = []

    def record(name: str, n: int | None, session) -> None:
        started = time.perf_counter()
        accuracy = score_on_test(session, texts, prompt)
        rows.append({"attention": name, "rfa_layers": n, "layers": None if n is None else sorted(order[:n]),
                     "test_accuracy": accuracy, "seconds": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)

    record("exact", None, HFSession(model_dir, texts.verbalizer))
    for n in (int(x) for x in args.layers.split(",")):
        softmax = tuple(i for i in range(len(order)) if i not in order[:n])
        attention = replace(DEFAULT_RFA, auto_kl=None, softmax_layers=softmax)
        record("rfa" if n else "softmax", n, plain_session(model_dir, texts.verbalizer, approx.ApproxConfig(), attention,
                                                           precision="float32"))
    report = {**provenance(command_line(argv if argv is not None else sys.argv[1:],
                                        ("python", "-m", "research.rfa_prompt_transfer"))),
              "question": "test accuracy of one tuned prompt with RFA in the server's n least damaging layers",
              "prompt": args.prompt, "task": args.task, "model": args.model, "test_examples": args.test,
              "server_choice": choice["rfa_layers"], "order": order, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
