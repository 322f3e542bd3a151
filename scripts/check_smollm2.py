"""SmolLM2 acceptance check: plain exact vs transformers, secure vs the plain oracle.

Runs a few real SST-2 sentences through SmolLM2-135M-Instruct and prints one JSON
object: max |plain exact - transformers| and max |secure - plain approx| relative
to the largest score, with wall times and traffic.  Used by tests/test_smollm2.py
and quoted in BENCHMARKS.md.

    .venv/bin/python scripts/check_smollm2.py --examples 4 --prompt-len 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import hf_scores  # noqa: E402
from secptune.infer import InferOptions, plain_scores, prepare, secure_scores  # noqa: E402
from secptune.inputs import load_jsonl  # noqa: E402
from secptune.tasks import task_file  # noqa: E402


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
    out["exact_vs_transformers_max_abs"] = float((exact - hf_scores(prep)).abs().max())
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
