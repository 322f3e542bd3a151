"""Zero-shot accuracy of SmolLM2 with each MPC activation approximation.

Compares the one-round Fourier SiLU (mpc.fourier, per-layer ranges calibrated by
the server on public text) with the comparison-based x·σ(x) on the sst2 and
agnews test sets, softmax attention, in plain mode (the secure run's own
approximations in float64).  Per configuration: accuracy, agreement with the
exact model, the largest score deviation from it, and the range warnings (inputs
outside a calibrated bound).  Writes ``reports/activation_fidelity.json``.

Usage: python -m research.activation_fidelity [--limit 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpc import approx
from research import command
from research.rfa_fidelity import ROOT, accuracy, strict_json
from rfa.config import SOFTMAX

CONFIGS = {
    "activation-sigmoid": (SOFTMAX, approx.ApproxConfig(activation="sigmoid")),
    "activation-fourier": (SOFTMAX, approx.ApproxConfig(activation="fourier")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="test examples per task (default 200)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "activation_fidelity.json"))
    args = parser.parse_args()

    from secptune.checkpoints import load_hf_model, resolve_model
    from secptune.server.prepare import prepare_server_model

    model = load_hf_model(resolve_model("smollm2"))
    arch = prepare_server_model(model).arch
    report = {
        "model": "smollm2",
        "act_bounds": list(arch.act_bounds),
        "accuracy": accuracy(model, CONFIGS, args.limit),
        "command": command("research.activation_fidelity"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(strict_json(report), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
