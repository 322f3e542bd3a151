"""What `secptune tune` runs when flags are left out: chosen for the machine it finds.

BBT's settings (prompt 50 tokens, d = 500, popsize 20, budget 8000) are the
defaults wherever a flag is given or a GPU is present (with a GPU and no --mode:
plain tuning there, since the secure run is CPU code in this version).  On a CPU-only machine a
secure forward of SmolLM2 costs tens of seconds per sequence, so with no --mode
the job runs a *short* secure run plus the plain run at the same settings and
prints them side by side — enough to show latency and bytes per call in about
ten minutes — and says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


from secptune.tune import TuneConfig

# the short CPU demonstration: three generations of two candidates on two examples (under
# 10 min on 2 cores, where one secure SmolLM2 call on them costs ~10-20 s; BENCHMARKS.md).
# Softmax attention, not the default RFA: RFA first needs the server's one-off preparation
# (`secptune prepare`, ~12 minutes for SmolLM2 on 2 cores), which would not leave the demo its 10 minutes.
CPU_SHORT = dict(k=1, popsize=2, budget=6, prompt_len=2, intrinsic_dim=20, test_limit=2, batch_size=4,
                 attention="softmax")


def _explicit(args) -> dict:
    keys = ("data", "train", "test", "template", "k", "seed", "prompt_len", "intrinsic_dim", "popsize",
            "budget", "loss", "attention", "test_limit", "patience", "exact", "alpha", "time_limit", "pad_bucket",
            "precision", "check_oracle", "split_layer", "noise", "eta", "release", "record_view",
            "variant", "dcor", "quant_bits", "in_layers", "out_layers", "epochs", "lr", "train_batch",
            "harden_steps", "emulator_keep")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if args.verbalizer:
        out["verbalizer"] = [w.strip() for w in args.verbalizer.split(",") if w.strip()]
    return out


def plan_runs(args) -> list[tuple[TuneConfig, str, str]]:
    """[(config, out dir, what was chosen and why)] for this invocation."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = TuneConfig(task=args.task, model=args.model, device=device, **_explicit(args))
    out_root = Path("runs")

    def out_for(cfg: TuneConfig) -> str:
        return args.out if args.out and args.mode else str(out_root / f"{cfg.task}-{cfg.model}-{cfg.mode}")

    if args.mode:
        cfg = replace(base, mode=args.mode)
        extent = f"{cfg.epochs} epochs" if cfg.mode == "guarded" else f"budget {cfg.budget}"
        return [(cfg, out_for(cfg), f"{cfg.mode} tuning of {cfg.model} on {cfg.task}, {extent}")]
    if device == "cpu":
        short = {k: v for k, v in CPU_SHORT.items() if k not in _explicit(args)}
        secure = replace(base, mode="secure", **short)
        plain = replace(secure, mode="plain")
        if args.out:
            out_root = Path(args.out)
        note = (
            f"no GPU and no --mode: a short secure run (k={secure.k}, popsize={secure.popsize}, "
            f"budget={secure.budget}, prompt_len={secure.prompt_len}, attention {secure.attention}) and the "
            "plain run at the same settings, side by side; pass --mode and --budget for a full run "
            "(with --mode, secure runs use the default RFA layers: `secptune prepare --model M` readies them ahead)"
        )
        return [(secure, out_for(secure), note), (plain, out_for(plain), "plain run at the same settings")]
    cfg = replace(base, mode="plain", exact=base.exact if "exact" in _explicit(args) else True)
    return [(cfg, out_for(cfg), f"GPU found: plain tuning on it (the secure run is CPU code in this version), "
                                f"budget {cfg.budget}")]
