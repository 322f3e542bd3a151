"""How faithful is each attention configuration to the model's own softmax attention?

Writes ``reports/rfa_fidelity.json`` and ``reports/rfa_fidelity.png``:

* ``layer_error``: per layer, ||attention output − exact softmax|| / ||exact softmax||
  on the same inputs (captured from the exact model on real sentences: no error
  propagation between layers);
* ``accuracy``: zero-shot test accuracy of SmolLM2 on sst2 and agnews with exact
  softmax and with each configuration (plain mode: the secure run's own
  approximations in float64), plus agreement of the predictions with softmax's;
* ``mpc_cost``: bytes, rounds and seconds of the attention op under MPC for each
  configuration (tiny-llama secure forward, owner's traffic, 4 sequences).

Usage: python scripts/rfa_fidelity.py [--limit 500] [--configs NAME,...] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import mpc  # noqa: E402,F401
from mpc import approx  # noqa: E402
from rfa.config import SOFTMAX, AttentionConfig  # noqa: E402

CONFIGS = {
    "softmax-approx": SOFTMAX,
    "rfa-positive-64": AttentionConfig(features="positive", num_features=64),
    "rfa-positive-256": AttentionConfig(features="positive", num_features=256),
    "rfa-fourier-128-s0.25": AttentionConfig(features="fourier", num_features=128, scale=0.25),
    # hybrids: RFA in the first four layers only, softmax in the other 26
    "rfa-positive-64-first4": AttentionConfig(features="positive", num_features=64, softmax_layers=tuple(range(4, 30))),
    "rfa-fitted-64-first4": AttentionConfig(features="fitted", num_features=64, softmax_layers=tuple(range(4, 30))),
}
ACCURACY_CONFIGS = ("rfa-positive-64", "rfa-fourier-128-s0.25", "rfa-positive-64-first4", "rfa-fitted-64-first4")
TASKS = ("sst2", "agnews")


def _options(task: str, limit: int | None, batch_size: int = 16):
    from secptune.infer import InferOptions
    from secptune.tasks import get_task, task_file

    spec = get_task(task)
    return InferOptions(
        model="smollm2",
        data=str(task_file(task, "test")),
        template=spec.templates["causal"],
        verbalizer=list(spec.verbalizers["causal"]),
        limit=limit,
        batch_size=batch_size,
    )


def layer_errors(model, configs: dict, sentences: int = 16) -> dict:
    from rfa.fit import attention_error
    from secptune.plain import PlainSession
    from secptune.infer import prepare
    from secptune.transformer import server_weights

    prep = prepare(_options("sst2", sentences))
    teacher = PlainSession(prep.model_dir, prep.verbalizer, True, approx.ApproxConfig(), SOFTMAX, model)
    teacher.model.capture = []
    for batch in prep.batches:
        teacher.scores(teacher.load_texts(batch), batch.prompt[:1])
    captured = teacher.model.capture
    out = {}
    acfg = approx.ApproxConfig()
    for name, cfg in configs.items():
        if cfg.kind != "rfa":
            continue
        _, weights = server_weights(model, cfg)
        errors = []
        for layer in [i for i in range(teacher.arch.layers) if cfg.uses_rfa(i)]:
            params = {n: weights[f"l{layer}.rfa.{n}"] for n in ("q", "k", "bq", "bk") if f"l{layer}.rfa.{n}" in weights}
            samples = [c for c in captured if c["layer"] == layer]
            errors.append(round(attention_error(samples, params, acfg, cfg), 4))
        out[name] = errors
        print(f"{name}: mean layer error {sum(errors) / len(errors):.3f}", flush=True)
    return out


def accuracy(model, configs: dict, limit: int) -> dict:
    """Zero-shot accuracy per configuration: an AttentionConfig, or (AttentionConfig, ApproxConfig)."""
    from secptune.infer import plain_scores, prepare
    from secptune.inputs import load_jsonl

    out = {}
    for task in TASKS:
        opts = _options(task, limit)
        # sorted by length so that each batch pads little (accuracy does not depend on order)
        examples = sorted(load_jsonl(opts.data, limit), key=lambda e: len(e.text) + len(e.text_b or ""))
        prep = prepare(opts, examples)
        labels = torch.tensor([e.label for e in prep.examples])
        started = time.perf_counter()
        exact, _ = plain_scores(prep, True, approx.ApproxConfig(), SOFTMAX, model)
        reference = exact.argmax(-1)
        rows = {"softmax-exact": {"accuracy": float((reference == labels).double().mean()), "wall_s": time.perf_counter() - started}}
        print(f"{task} softmax-exact {rows['softmax-exact']['accuracy']:.3f}", flush=True)
        for name, cfg in configs.items():
            started = time.perf_counter()
            cfg, acfg = cfg if isinstance(cfg, tuple) else (cfg, approx.ApproxConfig())
            scores, warnings = plain_scores(prep, False, acfg, cfg, model)
            pred = scores.argmax(-1)
            rows[name] = {
                "accuracy": float((pred == labels).double().mean()),
                "agreement_with_softmax": float((pred == reference).double().mean()),
                "finite": bool(torch.isfinite(scores).all()),
                "max_score_deviation": float((scores - exact).abs().max()),
                "range_warnings": warnings,
                "wall_s": time.perf_counter() - started,
            }
            print(f"{task} {name} {rows[name]['accuracy']:.3f} agree {rows[name]['agreement_with_softmax']:.3f}", flush=True)
        out[task] = {"examples": len(prep.examples), "results": rows}
    return out


def mpc_cost(configs: dict) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import prepared_inputs
    from secptune.infer import secure_scores

    out = {}
    for name, cfg in configs.items():
        opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
        started = time.perf_counter()
        _, comm, _ = secure_scores(prep, opts.cfg, attention=cfg)
        op = comm["owner"]["ops"]["attention"]
        out[name] = {
            "attention_bytes": op["online"]["bytes"],
            "attention_rounds": op["online"]["rounds"],
            "attention_dealer_bytes": op["dealer"]["bytes"],
            "attention_s": op["wall_s"],
            "forward_bytes": comm["owner"]["online"]["bytes"],
            "forward_rounds": comm["owner"]["online"]["rounds"],
            "wall_s": time.perf_counter() - started,
        }
        print(f"mpc {name}: {out[name]}", flush=True)
    return out


def _strict(x):
    """JSON without Infinity/NaN: an undefined error (denominator out of range) becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_strict(v) for v in x]
    return x


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, errors in report["layer_error"].items():
        ax.plot(range(len(errors)), errors, marker=".", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative error of attention output vs softmax")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M: RFA fidelity per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="test examples per task (default 500)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configuration names")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-configs", default=",".join(ACCURACY_CONFIGS),
                        help="configurations whose zero-shot accuracy is measured (each costs a pass over the test sets)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "rfa_fidelity.json"))
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from secptune.checkpoints import load_hf_model, resolve_model

    model = load_hf_model(resolve_model("smollm2"))
    report = {
        "model": "smollm2",
        "configs": {name: cfg.as_dict() for name, cfg in configs.items()},
        "mpc_cost": mpc_cost(configs),
        "layer_error": layer_errors(model, configs),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_strict(report), indent=1))
    plot(report, out.with_suffix(".png"))
    if not args.skip_accuracy:
        chosen = {name: CONFIGS[name] for name in args.accuracy_configs.split(",")}
        report["accuracy"] = accuracy(model, chosen, args.limit)
        out.write_text(json.dumps(_strict(report), indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
