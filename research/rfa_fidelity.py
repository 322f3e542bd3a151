"""How faithful is each attention configuration to the model's own softmax attention?

Writes ``reports/rfa_fidelity.json`` and ``reports/rfa_fidelity.png``:

* ``layer_error``: per layer, ||attention output − exact softmax|| / ||exact softmax||
  on the same inputs (captured from the exact model on real sentences: no error
  propagation between layers);
* ``accuracy``: zero-shot test accuracy of SmolLM2 on sst2 and agnews with exact
  softmax and with each configuration (plain mode: the secure run's own
  approximations in float64), plus agreement of the predictions with softmax's;
* ``mpc_cost``: bytes, rounds and seconds of the attention op under MPC for each
  configuration (tiny-llama secure forward, owner's traffic, 4 sequences);
* ``server_choice``: for the default, the server's layer choice (damage per layer, KLs tried);
* ``tuned`` (``--tune``): test accuracy after CMA-ES tuning against the default RFA and
  against exact softmax, same seed, settings and number of generations; ``cross``: each
  tuned prompt tested under the other attention too.

Usage: python -m research.rfa_fidelity [--limit 500] [--configs NAME,...] [--accuracy-configs NAME,...]
       [--skip-accuracy] [--keep-previous] [--tune BUDGET --tune-minutes M [--tune-tasks T] [--tune-only]]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

import mpc  # noqa: F401
from mpc import approx
from rfa.config import DEFAULT_RFA, SOFTMAX, AttentionConfig

ROOT = Path(__file__).resolve().parent.parent  # the checkout: reports/ and runs/ are written there

CONFIGS = {
    "softmax-approx": SOFTMAX,
    "rfa-positive-64": AttentionConfig(features="positive", num_features=64),
    "rfa-positive-256": AttentionConfig(features="positive", num_features=256),
    "rfa-fourier-128-s0.25": AttentionConfig(features="fourier", num_features=128, scale=0.25),
    # hybrids: RFA in the first four layers only, softmax in the other 26
    "rfa-positive-64-first4": AttentionConfig(features="positive", num_features=64, softmax_layers=tuple(range(4, 30))),
    # maps fitted to the model (secptune.server.feature_fit) in every layer, and the product's default:
    # fitted maps in the layers the server chooses (secptune.server.layer_choice)
    "rfa-fitted-64": AttentionConfig(features="fitted", num_features=64),
    "rfa-default": DEFAULT_RFA,
}
ACCURACY_CONFIGS = ("rfa-positive-64", "rfa-fourier-128-s0.25", "rfa-positive-64-first4", "rfa-fitted-64", "rfa-default")
TASKS = ("sst2", "agnews")
NOTE = (
    "null in layer_error: the layer keeps softmax, or the configuration's denominator left its range (undefined "
    "output); mpc_cost measured on tiny-llama (2 layers: '-first4' hybrids are all-RFA there, and rfa-default "
    "is the server's choice for tiny-llama, not SmolLM2's)"
)


def _options(task: str, limit: int | None, batch_size: int = 64, model: str = "smollm2"):
    from secptune.infer import InferOptions
    from secptune.tasks import get_task, task_file

    spec = get_task(task)
    return InferOptions(
        model=model,
        data=str(task_file(task, "test")),
        template=spec.templates["causal"],
        verbalizer=list(spec.verbalizers["causal"]),
        limit=limit,
        batch_size=batch_size,
    )


def layer_errors(model, configs: dict, choices: dict, sentences: int = 16) -> dict:
    """Per-layer attention errors of each RFA config; ``choices`` collects the server's layer
    choices (by config name) as the configs resolve."""
    from rfa.fit import attention_error
    from secptune.plain import PlainSession
    from secptune.infer import prepare
    from secptune.server.prepare import prepare_server_model

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
        server = prepare_server_model(model, cfg)
        weights, cfg = server.weights, server.attention
        configs[name] = cfg  # as it runs (the default: with the server's choice of layers)
        if server.choice:
            choices[name] = server.choice
        errors = []  # None: the layer keeps softmax
        for layer in range(teacher.arch.layers):
            params = {n: weights[f"l{layer}.rfa.{n}"] for n in ("q", "k", "bq", "bk") if f"l{layer}.rfa.{n}" in weights}
            samples = [c for c in captured if c["layer"] == layer]
            errors.append(round(attention_error(samples, params, acfg, cfg), 4) if cfg.uses_rfa(layer) else None)
        out[name] = errors
        known = [e for e in errors if e is not None]
        print(f"{name}: mean layer error {sum(known) / len(known):.3f} over {len(known)} RFA layers", flush=True)
    return out


def eval_examples(task: str, limit: int, split: str = "test") -> list:
    """The first ``limit`` test examples, or (``validation``) a seeded sample of ``limit`` from
    the train pool: defaults are chosen on validation text, never on the test figures."""
    import random

    from secptune.inputs import load_jsonl
    from secptune.tasks import task_file

    if split == "test":
        return load_jsonl(task_file(task, "test"), limit)
    if split != "validation":
        raise ValueError(f"split must be test or validation, not {split!r}")
    pool = load_jsonl(task_file(task, "train"))
    return random.Random(f"validation-{task}").sample(pool, min(limit, len(pool)))


def accuracy(model, configs: dict, limit: int, split: str = "test") -> dict:
    """Zero-shot accuracy per configuration: an AttentionConfig, or (AttentionConfig, ApproxConfig)."""
    from secptune.infer import plain_scores, prepare

    out = {}
    for task in TASKS:
        opts = _options(task, limit)
        # sorted by length so that each batch pads little (accuracy does not depend on order)
        examples = sorted(eval_examples(task, limit, split), key=lambda e: len(e.text) + len(e.text_b or ""))
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
    """The attention op's cost under MPC: tiny-llama, the first 4 SST-2 test sentences in batches of
    2, a 4-token prompt (reports before the move to research/ used 4 sentences of the tests instead)."""
    from secptune.infer import prepare, secure_scores

    out = {}
    for name, cfg in configs.items():
        opts = replace(_options("sst2", 4, batch_size=2, model="tiny-llama"), prompt_len=4)
        prep = prepare(opts)
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


def tune_pair(attention: AttentionConfig, budget: int, minutes: float | None, test_limit: int, device: str = "cpu",
              popsize: int = 10, k: int = 16, tasks=TASKS, zero_shot: dict | None = None) -> dict:
    """Tune a prompt against ``attention`` (float64 oracle of the secure run) and against exact
    softmax (transformers), same seed, settings and number of generations; test both prompts, each
    also under the other attention (``cross``: the same prompt under both, free of tuning noise).

    ``zero_shot[task]``: zero-shot test scores of the same examples measured before (the report's
    accuracy section); those tasks skip the zero-shot passes (an AG News RFA pass is ~10 min on 2 cores)."""
    from secptune.hf_session import HFSession
    from secptune.plain import PlainSession
    from secptune.tune import TuneConfig, score_on_test, tune_program
    from secptune.tune_job import build_texts

    settings = {"k": k, "seed": 42, "prompt_len": 10, "intrinsic_dim": 100, "popsize": popsize, "alpha": 0.1,
                "budget": budget, "minutes": minutes, "test_examples": test_limit, "attention": attention.as_dict()}
    out: dict = {}
    for task in tasks:
        out[task] = {"settings": settings}
        cfg = TuneConfig(task=task, mode="plain", k=k, seed=42, prompt_len=10, intrinsic_dim=100, popsize=popsize,
                         budget=budget, alpha=0.1, test_limit=test_limit, device=device, time_limit=minutes,
                         batch_size=256)  # fmt: skip
        model_dir, texts, loss = build_texts(cfg)
        known = (zero_shot or {}).get(task)
        if known:
            texts = replace(texts, test_zero=None)
            out[task]["zero_shot_from"] = "the report's accuracy section (same test examples)"
        sessions, prompts = {}, {}
        for name in ("rfa", "softmax-exact"):  # the slower one first: its generations set the budget
            if name == "rfa":
                run = replace(cfg, loss=loss, attention="rfa")
                sessions[name] = PlainSession(model_dir, texts.verbalizer, False, approx.ApproxConfig(), attention, device=device)
            else:
                run = replace(cfg, loss=loss, exact=True, budget=out[task]["rfa"]["generations"] * popsize, time_limit=None)
                sessions[name] = HFSession(model_dir, texts.verbalizer, device=device)
            started = time.perf_counter()
            run_dir = ROOT / "runs" / f"rfa-tune-{task}-{name}"
            result = tune_program(sessions[name], run, texts, str(run_dir), False, False)
            prompts[name] = result["prompt"]
            torch.save(prompts[name], run_dir / "prompt.pt")
            final = result["final"]
            if known:
                final["test"]["zero_shot"] = known[name]
            out[task][name] = {"test": final["test"], "dev": final["dev"], "generations": final["generations_run"],
                               "stopped": final["stopped"], "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
            print(f"tuned {task} {name}: {out[task][name]}", flush=True)
        for tuned_on, scored_on in (("rfa", "softmax-exact"), ("softmax-exact", "rfa")):
            score = score_on_test(sessions[scored_on], texts, prompts[tuned_on])
            out[task]["cross"] = {**out[task].get("cross", {}), f"tuned {tuned_on}, tested {scored_on}": score}
            print(f"{task}: prompt tuned under {tuned_on}, tested under {scored_on}: {score:.3f}", flush=True)
    return out


def carry_previous(report: dict, previous: dict) -> None:
    """Keep the previous run's rows for configurations not measured this time (a pass over the
    test sets costs minutes to a quarter of an hour per configuration on a 2-core CPU)."""
    carried = set()
    for section in ("configs", "mpc_cost", "layer_error"):
        for name, row in previous.get(section, {}).items():
            if name in CONFIGS and name not in report[section]:
                report[section][name] = row
                carried.add(name)
    for task, block in previous.get("accuracy", {}).items():
        now = report.get("accuracy", {}).get(task)
        if now is None:  # not measured this time (--skip-accuracy): the previous block as it was
            report.setdefault("accuracy", {})[task] = block
            carried.update(name for name in block["results"] if name in CONFIGS)
            continue
        if now["examples"] != block["examples"]:
            continue
        for name, row in block["results"].items():
            if name in CONFIGS and name not in now["results"]:
                now["results"][name] = row
                carried.add(name)
    report["carried_from_previous_run"] = sorted(carried)


def strict_json(x):
    """JSON without Infinity/NaN: an undefined error (denominator out of range) becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [strict_json(v) for v in x]
    return x


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, errors in report["layer_error"].items():
        points = [(i, e) for i, e in enumerate(errors) if e is not None]
        ax.plot(*zip(*points), marker=".", linestyle="-" if len(points) == len(errors) else "none", label=name)
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
    parser.add_argument("--keep-previous", action="store_true",
                        help="keep the rows of configurations not measured this time from the existing report")
    parser.add_argument("--accuracy-configs", default=",".join(ACCURACY_CONFIGS),
                        help="configurations whose zero-shot accuracy is measured (each costs a pass over the test sets)")
    parser.add_argument("--tune", type=int, default=0, metavar="BUDGET",
                        help="also tune a prompt against the default RFA and against exact softmax (API calls)")
    parser.add_argument("--tune-minutes", type=float, default=None, help="time limit of each default-RFA tuning run")
    parser.add_argument("--tune-k", type=int, default=16, help="k-shot examples per class for --tune (default 16)")
    parser.add_argument("--tune-popsize", type=int, default=10, help="CMA-ES population for --tune (default 10)")
    parser.add_argument("--tune-tasks", default=",".join(TASKS), help="tasks for --tune")
    parser.add_argument("--tune-only", action="store_true",
                        help="only the --tune check, added to the existing report (its other sections are kept)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "rfa_fidelity.json"))
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else None
    if args.tune_only:
        if not args.tune or previous is None:
            parser.error(f"--tune-only needs --tune BUDGET and an existing report ({out})")
        tune_into(previous, args, configs, out)
        return

    from secptune.checkpoints import load_hf_model, resolve_model

    model = load_hf_model(resolve_model("smollm2"))
    choices: dict = {}
    report = {"model": "smollm2", "note": NOTE, "mpc_cost": mpc_cost(configs), "layer_error": layer_errors(model, configs, choices)}
    report["configs"] = {name: cfg.as_dict() for name, cfg in configs.items()}  # resolved by layer_errors
    report["server_choice"] = choices
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(strict_json(report), indent=1))
    if not args.skip_accuracy:
        chosen = {name: configs.get(name, CONFIGS[name]) for name in args.accuracy_configs.split(",")}
        report["accuracy"] = accuracy(model, chosen, args.limit)
    if args.keep_previous and previous:
        carry_previous(report, previous)
    out.write_text(json.dumps(strict_json(report), indent=1))
    plot(report, out.with_suffix(".png"))
    if args.tune:
        tune_into(report, args, configs, out, previous if args.keep_previous else None)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def tune_into(report: dict, args, configs: dict, out: Path, previous: dict | None = None) -> None:
    """Run the after-tuning check and write it into ``report`` (tasks not tuned now keep their rows)."""
    known = {}
    for task, block in report.get("accuracy", {}).items():
        rows = block["results"]
        if block["examples"] == args.limit and "rfa-default" in rows and "softmax-exact" in rows:
            known[task] = {"rfa": rows["rfa-default"]["accuracy"], "softmax-exact": rows["softmax-exact"]["accuracy"]}
    tuned = tune_pair(configs.get("rfa-default", DEFAULT_RFA), args.tune, args.tune_minutes, args.limit,
                      popsize=args.tune_popsize, k=args.tune_k, tasks=args.tune_tasks.split(","), zero_shot=known)
    report["tuned"] = {**(previous or report).get("tuned", {}), **tuned}
    out.write_text(json.dumps(strict_json(report), indent=1))


if __name__ == "__main__":
    main()
