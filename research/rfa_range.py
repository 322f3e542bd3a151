"""Do RFA's feature exponents stay in the secure range on task text? (issue 26: the condition
for RFA as the default attention)

Runs ``secptune infer`` on SmolLM2 / SST-2 in plain float32 (the secure run's approximations,
whose oracle counts every input outside an approximation's range) with and without a random
10-token prompt, the same with softmax attention, and one secure RFA infer whose sampled range
check reports events; writes ``reports/prepare/rfa_range.json``.  The previous report is kept
under ``before`` when it measured another fit (so one file says what changed).

    python -m research.rfa_range [--limit 64] [--secure-limit 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from secptune.bench.common import provenance
from secptune.server.feature_fit import FIT_VERSION

OUT = Path("reports/prepare/rfa_range.json")


def tuner_scale_prompt(path: Path, length: int = 10) -> str:
    """A random prompt at the scale of the tuner's candidates (coordinates of the embedding table's std,
    BBT's projection at alpha 1): `infer --prompt-len` draws 0.02, ~7x smaller than SmolLM2's 0.136."""
    import torch

    from secptune.checkpoints import load_hf_model, resolve_model

    model = load_hf_model(resolve_model("smollm2"))
    std = float(model.get_input_embeddings().weight.detach().double().std())
    gen = torch.Generator().manual_seed(7)
    torch.save(torch.randn(length, model.config.hidden_size, generator=gen, dtype=torch.float64) * std, path)
    return f"tuner-scale prompt ({length} x {model.config.hidden_size}, std {std:.3f})"


def infer(args: list[str], label: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="secptune-rfa-range-") as out:
        argv = [sys.executable, "-m", "secptune", "infer", "--task", "sst2", "--model", "smollm2", *args, "--out", out]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}")
        result = json.loads((Path(out) / "result.json").read_text())
    shown = " ".join(args) if label is None else " ".join(a for a in args if not a.endswith(".pt")) + " " + label
    run = {"command": "secptune infer --task sst2 --model smollm2 " + shown, "accuracy": result["accuracy"]}
    if result.get("range_events") is not None:
        run["range_events"] = result["range_events"]
    else:
        run["range_warnings"] = result.get("range_warnings") or {}
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--secure-limit", type=int, default=16)
    a = p.parse_args(argv)
    plain = ["--mode", "plain", "--precision", "float32", "--limit", str(a.limit), "--batch-size", "32"]
    runs = [infer(plain + ["--attention", att, "--prompt-len", str(n)]) for att, n in (("rfa", 10), ("softmax", 10), ("rfa", 0))]
    with tempfile.TemporaryDirectory(prefix="secptune-rfa-range-prompt-") as tmp:
        path = Path(tmp) / "prompt.pt"
        label = "--prompt " + tuner_scale_prompt(path)
        runs += [infer(plain + ["--attention", att, "--prompt", str(path)], label) for att in ("rfa", "softmax")]
        runs.append(infer(["--mode", "secure", "--limit", str(a.secure_limit), "--batch-size", "8", "--attention", "rfa",
                           "--prompt", str(path)], label))
    report = {**provenance("python -m research.rfa_range " + " ".join(argv or [])),
              "question": "do RFA's feature exponents stay in the secure range on task text? (issue 26)",
              "fit_version": FIT_VERSION, "runs": runs}
    if OUT.is_file():
        old = json.loads(OUT.read_text())
        if old.get("fit_version") != FIT_VERSION:
            report["before"] = {k: v for k, v in old.items() if k != "before"}
        elif "before" in old:
            report["before"] = old["before"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
