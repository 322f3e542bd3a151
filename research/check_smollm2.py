"""SmolLM2 acceptance check: plain exact vs transformers, secure vs the plain oracle.

Runs a few real SST-2 sentences through SmolLM2-135M-Instruct and prints one JSON
object: max |plain exact - transformers| and max |secure - plain approx| relative
to the largest score, with wall times and traffic.  tests/test_smollm2.py asserts
the same on 2 sentences; the figures are quoted in BENCHMARKS.md.  "transformers"
is the unmodified Hugging Face model in float64 behind secptune.hf_session (before
the move to research/, the tests' reference.hf_scores: the same model fed the same
embeddings).

    .venv/bin/python -m research.check_smollm2 --examples 4 --prompt-len 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from secptune.checkpoints import load_hf_model
from secptune.hf_session import HFSession
from secptune.infer import InferOptions, plain_scores, prepare, secure_scores
from secptune.inputs import load_jsonl
from secptune.scoring import score_batches
from secptune.tasks import task_file


def transformers_scores(prep) -> torch.Tensor:
    """The Hugging Face model itself, in float64, on the same batches and prompts."""
    session = HFSession(prep.model_dir, prep.verbalizer, model=load_hf_model(prep.model_dir).double())
    return score_batches(session, prep.batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--data")
    ap.add_argument("--skip-secure", action="store_true")
    args = ap.parse_args()
    examples = load_jsonl(task_file("sst2", "test", args.data), args.examples)
    opts = InferOptions(
        model="smollm2", data="", template="{text} It was {mask}", verbalizer=["terrible", "great"],
        prompt_len=args.prompt_len, batch_size=args.batch_size,
    )
    prep = prepare(opts, examples)
    out = {"examples": len(examples), "prompt_len": args.prompt_len, "batch_size": args.batch_size}
    t = time.perf_counter()
    exact, _ = plain_scores(prep, exact=True, cfg=opts.cfg)
    out["plain_exact_s"] = time.perf_counter() - t
    out["exact_vs_transformers_max_abs"] = float((exact - transformers_scores(prep)).abs().max())
    t = time.perf_counter()
    oracle, warnings = plain_scores(prep, exact=False, cfg=opts.cfg)
    out["plain_approx_s"] = time.perf_counter() - t
    out["range_warnings"] = warnings
    out["approx_vs_exact_max_abs"] = float((oracle - exact).abs().max())
    out["max_abs_score"] = float(oracle.abs().max())
    if not args.skip_secure:
        t = time.perf_counter()
        got, comm, _ = secure_scores(prep, opts.cfg)
        out["secure_s"] = time.perf_counter() - t
        out["secure_vs_plain_rel"] = float((got - oracle).abs().max() / oracle.abs().max())
        out["comm"] = comm
        out["secure_scores"] = got.tolist()
    out["plain_scores"] = oracle.tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
