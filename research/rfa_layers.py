"""Which layers of SmolLM2 can run random-feature attention without costing accuracy?

The model server decides this once, before serving, from its own model and text:

1. damage: for every layer l, the model with fitted RFA (rfa.fit) in layer l only and the
   secure run's other approximations; KL(softmax-approx || hybrid) of the next-token
   distribution over every position of the server's public text (secptune.tiny_corpus
   lines the fit did not see; never the owner's data).
2. hybrids: layers sorted by damage; "rfa-N" runs RFA in the N least-damaging layers and
   the secure run's softmax in the rest.  For each N: public-text KL and zero-shot accuracy
   on a validation set (examples of the sst2/agnews *train* pools) and on the test set.
3. the choice: the largest N whose validation accuracy is within 1 point of exact softmax
   on both tasks (the test set is only reported, never used to choose).
4. after tuning (``--tune``): CMA-ES prompt tuning against the chosen hybrid (float64
   oracle) and against exact softmax (transformers, float32), same seed and budget.

Writes ``--out`` (default reports/rfa_layers.json) and a plot beside it; run again with
``--tune`` on a finished sweep, it only tunes.  Usage: ``python -m research.rfa_layers [--device cuda]``.  Needs a GPU for
the full run in minutes (``--device cuda``); ``--limit`` and ``--counts`` shrink it for a CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import mpc  # noqa: F401
from mpc import approx
from research.rfa_fidelity import ROOT, tune_pair
from rfa.config import SOFTMAX, AttentionConfig
from secptune.server.public_text import public_sequences
from secptune.nonlinear import ExactNonlinear, Nonlinear

TASKS = ("sst2", "agnews")
FEATURES = dict(kind="rfa", features="fitted", num_features=64)
COUNTS = (0, 1, 2, 3, 4, 6, 8, 10, 12, 15, 20, 25, 30)


def hybrid(rfa_layers, layers: int) -> AttentionConfig:
    return AttentionConfig(**FEATURES, softmax_layers=tuple(i for i in range(layers) if i not in set(rfa_layers)))


class Bench:
    """One SmolLM2 session whose non-linearities are swapped per configuration (the weights,
    with every layer's fitted feature maps, are built once)."""

    def __init__(self, device: str):
        from secptune.checkpoints import load_hf_model, resolve_model
        from secptune.plain import PlainSession

        self.hf = load_hf_model(resolve_model("smollm2"))
        self.acfg = approx.ApproxConfig()
        every = AttentionConfig(**FEATURES)
        self.verbalizers: dict[str, torch.Tensor] = {}
        self.session = PlainSession(None, torch.zeros(1, self.hf.config.vocab_size, dtype=torch.float64),
                                    False, self.acfg, every, self.hf, device=device)
        self.layers = self.session.arch.layers
        self.texts: dict[tuple[str, str], tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    def use(self, attention: AttentionConfig, exact: bool = False) -> None:
        self.session.model.nl = (ExactNonlinear if exact else Nonlinear)(cfg=self.acfg, attention=attention)

    def public_kl(self, reference: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """Next-token log-probabilities on the public text, and KL(reference || these)."""
        model, dev = self.session.model, self.session.device
        out = []
        with torch.no_grad(), dev:
            # corpus lines 33-68: the feature maps were fitted on lines 1-32 (count=8)
            for ids in public_sequences(self.hf, self.hf.config.vocab_size, count=17)[8:]:
                h = model.hidden_of_ids(torch.tensor(ids).unsqueeze(0))
                out.append(torch.log_softmax(model.score(h, (model.w["head.out"], None))[0], -1).cpu())
        logp = torch.cat(out)
        if reference is None:
            return logp, 0.0
        return logp, float((reference.exp() * (reference - logp)).sum(-1).mean())

    def load(self, task: str, split: str, limit: int) -> None:
        from secptune.infer import InferOptions, prepare
        from secptune.inputs import load_jsonl
        from secptune.tasks import get_task, task_file

        spec = get_task(task)
        pool = load_jsonl(task_file(task, "train" if split == "validation" else "test"))
        random.Random(0).shuffle(pool)
        examples = sorted(pool[:limit], key=lambda e: len(e.text) + len(e.text_b or ""))
        opts = InferOptions(model="smollm2", data="", template=spec.templates["causal"],
                            verbalizer=list(spec.verbalizers["causal"]), batch_size=256)
        prep = prepare(opts, examples)
        rows, bias = self.session.model.label_head(prep.verbalizer.to(self.session.device))
        ids = [self.session.load_texts(b) for b in prep.batches]
        self.texts[(task, split)] = (ids, (rows, bias), torch.tensor([e.label for e in prep.examples]))

    def accuracy(self, task: str, split: str) -> tuple[float, torch.Tensor]:
        ids, head, labels = self.texts[(task, split)]
        self.session.head = head
        empty = torch.zeros(1, 0, self.session.arch.hidden, dtype=torch.float64)
        pred = torch.cat([self.session.scores(i, empty) for i in ids]).argmax(-1)
        return float((pred == labels).double().mean()), pred


def sweep(bench: Bench, counts, limit: int, log, save) -> dict:
    splits = [(t, s) for t in TASKS for s in ("validation", "test")]
    for task, split in splits:
        bench.load(task, split, limit)
    report: dict = {"examples_per_split": limit, "configs": {}}

    def measure(name: str, attention: AttentionConfig, exact: bool = False, reference=None) -> dict:
        started = time.perf_counter()
        bench.use(attention, exact)
        logp, kl = bench.public_kl(reference)
        row = {"public_kl": kl, "accuracy": {}}
        for task, split in splits:
            acc, _ = bench.accuracy(task, split)
            row["accuracy"].setdefault(task, {})[split] = acc
        row["range_warnings"] = dict(bench.session.model.nl.monitor.violations)
        row["wall_s"] = round(time.perf_counter() - started, 1)
        report["configs"][name] = row
        save(report)
        log(f"{name}: KL {kl:.4f} " + " ".join(f"{t}/{s[:4]} {row['accuracy'][t][s]:.3f}" for t, s in splits))
        return {"logp": logp, **row}

    exact = measure("softmax-exact", SOFTMAX, exact=True)
    base = measure("softmax-approx", SOFTMAX, reference=exact["logp"])
    damage = []
    for layer in range(bench.layers):
        bench.use(hybrid([layer], bench.layers))
        damage.append(bench.public_kl(base["logp"])[1])
        log(f"layer {layer}: KL {damage[-1]:.4f}")
        save({**report, "layer_damage": damage})
    order = sorted(range(bench.layers), key=lambda i: damage[i])
    report.update(layer_damage=damage, order=order)
    for n in counts:
        measure(f"rfa-{n}", hybrid(order[:n], bench.layers), reference=exact["logp"])
    ok = [n for n in counts if all(
        report["configs"][f"rfa-{n}"]["accuracy"][t]["validation"] >= report["configs"]["softmax-exact"]["accuracy"][t]["validation"] - 0.01
        for t in TASKS)]
    report["chosen"] = {"rfa_layers": sorted(order[: max(ok)]) if ok else [], "count": max(ok) if ok else 0,
                        "rule": "largest N within 1 point of exact softmax on validation, both tasks"}
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [int(k.split("-")[1]) for k in report["configs"] if k.startswith("rfa-")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for task in TASKS:
        for split, style in (("validation", "--"), ("test", "-")):
            ax1.plot(counts, [report["configs"][f"rfa-{n}"]["accuracy"][task][split] for n in counts], style,
                     marker=".", label=f"{task} {split}")
            ax1.axhline(report["configs"]["softmax-exact"]["accuracy"][task][split], ls=":", color="grey")
    ax1.set_xlabel("layers running RFA (least damaging first)")
    ax1.set_ylabel("zero-shot accuracy")
    ax1.legend(fontsize=8)
    ax2.bar(range(len(report["layer_damage"])), report["layer_damage"])
    ax2.set_yscale("log")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("public-text KL, RFA in this layer only")
    fig.suptitle("SmolLM2-135M: fitted RFA per layer (server's choice)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=500, help="examples per task and split (default 500)")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)), help="hybrid sizes N to measure")
    parser.add_argument("--tune", type=int, default=0, metavar="BUDGET", help="also tune with this budget (API calls)")
    parser.add_argument("--tune-minutes", type=float, default=None, help="time limit of each tuning run")
    parser.add_argument("--out", default=str(ROOT / "reports" / "rfa_layers.json"))
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if out.is_file() and "chosen" in json.loads(out.read_text()):  # a finished sweep: only tune
        report = json.loads(out.read_text())
        log(f"reusing the sweep in {out}")
    else:
        bench = Bench(args.device)
        report = {"model": "smollm2", "device": args.device, "features": FEATURES,
                  **sweep(bench, [int(c) for c in args.counts.split(",")], args.limit, log,
                          lambda partial: out.write_text(json.dumps(partial, indent=1)))}
        del bench
        out.write_text(json.dumps(report, indent=1))
        plot(report, out.with_suffix(".png"))
    log(f"chosen: {report['chosen']}")
    if args.tune:
        chosen = hybrid(report["chosen"]["rfa_layers"], len(report["layer_damage"]))
        report["tuned"] = tune_pair(chosen, args.tune, args.tune_minutes, 500, args.device, popsize=20)
        out.write_text(json.dumps(report, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
