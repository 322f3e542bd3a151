"""Plaintext accuracy of the gradient baselines: full fine-tuning (SFT) and gradient prompt tuning.

    python -m research.baseline_accuracy [--tasks sst2 agnews yelp mrpc rte] [--model smollm2] [--k 16] [--seed 42]
        [--methods sft prompt-grad zero-shot] [--epochs-sft 5] [--epochs-prompt 8] [--test-limit 200]
        [--out reports/baseline_accuracy.json]

Why plaintext: the secure baselines (secptune.baseline) compute the same gradients as torch's
autograd within fixed-point tolerance (tests/test_baseline.py), so their accuracy is the plaintext
accuracy; running them under MPC for hundreds of steps would take days on a CPU.  This script trains
with Hugging Face ``transformers`` in float32 on the same k-shot split (secptune.fewshot, per-class k
for train and dev, seeded), templates, label words and test examples as ``secptune tune``:

* ``sft``: every weight, Adam (lr 5e-5), cross-entropy over the label words at the predicted position;
* ``prompt-grad``: only ``--prompt-len`` prompt embeddings (inserted where ``secptune tune`` puts its
  prompt, initialised from random vocabulary embeddings), Adam (lr 1e-2), the same loss;
* ``zero-shot``: no training.

The state with the best dev score (accuracy, F1 for MRPC; ties go to the earlier epoch) is evaluated
on the test set.  Output: JSON with per-task, per-method dev curve and test score, plus a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from secptune.arch import arch_from_config
from secptune.checkpoints import load_config, load_tokenizer, resolve_model
from secptune.infer import pad_token
from secptune.inputs import Template, encode, verbalizer_ids
from secptune.tasks import TASKS, get_task
from secptune.tune import TuneConfig, metric
from secptune.tune_job import task_examples

METHODS = ("zero-shot", "sft", "prompt-grad")
LR = {"sft": 5e-5, "prompt-grad": 1e-2}


class TaskData:
    """One task's token ids, scored positions and labels per split (the tuner's split and template)."""

    def __init__(self, task: str, tokenizer, arch, k: int, seed: int, test_limit: int, data: str | None):
        spec = get_task(task)
        template = Template(spec.templates[arch.family], arch.family)
        self.label_ids = torch.tensor(verbalizer_ids(tokenizer, list(spec.verbalizers[arch.family]), template))
        self.metric = spec.metric
        train, dev, test = task_examples(TuneConfig(task=task, data=data, k=k, seed=seed, test_limit=test_limit))
        self.splits = {}
        for name, examples in (("train", train), ("dev", dev), ("test", test)):
            enc = encode(tokenizer, examples, template, arch.prefix_tokens)
            self.splits[name] = (enc.ids, enc.pred, [int(e.label) for e in examples])


class Scorer:
    """Label-word logits of a causal LM for token rows, with an optional trainable prompt after the BOS."""

    def __init__(self, model, prefix: tuple[int, ...], pad_id: int):
        self.model, self.prefix, self.pad_id = model, list(prefix), pad_id
        self.embed = model.get_input_embeddings()

    def logits(self, rows: list[list[int]], pred: list[int], label_ids: torch.Tensor, prompt=None) -> torch.Tensor:
        P = 0 if prompt is None else prompt.shape[0]
        seqs = [self.prefix + r for r in rows]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n + P, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s) + P] = 1
        emb = self.embed(ids)
        if prompt is not None:
            lead = len(self.prefix)
            emb = torch.cat([emb[:, :lead], prompt.unsqueeze(0).expand(len(rows), -1, -1), emb[:, lead:]], dim=1)
        out = self.model(inputs_embeds=emb, attention_mask=mask).logits
        where = torch.tensor([len(self.prefix) + P + p for p in pred])
        return out[torch.arange(len(rows)), where][:, label_ids]

    @torch.no_grad()
    def evaluate(self, split, label_ids, prompt=None, batch: int = 16, kind: str = "accuracy") -> float:
        rows, pred, labels = split
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths per batch: less padding
        guesses = [0] * len(rows)
        for s in range(0, len(order), batch):
            chunk = order[s : s + batch]
            scores = self.logits([rows[i] for i in chunk], [pred[i] for i in chunk], label_ids, prompt)
            for i, g in zip(chunk, scores.argmax(-1).tolist()):
                guesses[i] = g
        return metric(guesses, labels, kind)


def train(method: str, scorer: Scorer, data: TaskData, epochs: int, batch: int, seed: int, prompt_len: int, bar) -> dict:
    """Epochs of Adam on the train split; the best dev state is scored on test."""
    gen = torch.Generator().manual_seed(seed)
    model = scorer.model
    prompt = None
    if method == "prompt-grad":
        for p in model.parameters():
            p.requires_grad_(False)
        vocab = scorer.embed.weight
        init = vocab[torch.randint(0, vocab.shape[0], (prompt_len,), generator=gen)].detach().clone()
        prompt = torch.nn.Parameter(init)
        params = [prompt]
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        params = [p for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=LR[method])
    rows, pred, labels = data.splits["train"]
    y = torch.tensor(labels)
    dev = [scorer.evaluate(data.splits["dev"], data.label_ids, prompt, kind=data.metric)]
    best, best_state = dev[0], _snapshot(method, model, prompt)
    losses = []
    for epoch in range(epochs):
        model.train(method == "sft")
        perm = torch.randperm(len(rows), generator=gen).tolist()
        total = 0.0
        for s in range(0, len(perm), batch):
            chunk = perm[s : s + batch]
            scores = scorer.logits([rows[i] for i in chunk], [pred[i] for i in chunk], data.label_ids, prompt)
            loss = torch.nn.functional.cross_entropy(scores.float(), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        model.eval()
        losses.append(total / len(rows))
        dev.append(scorer.evaluate(data.splits["dev"], data.label_ids, prompt, kind=data.metric))
        if dev[-1] > best:
            best, best_state = dev[-1], _snapshot(method, model, prompt)
        bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}", dev=f"{dev[-1]:.3f}")
    _restore(method, model, prompt, best_state)
    test = scorer.evaluate(data.splits["test"], data.label_ids, prompt, kind=data.metric)
    return {"lr": LR[method], "epochs": epochs, "batch": batch, "train_loss": losses, "dev": dev,
            "best_dev": best, "best_epoch": dev.index(best), "test": test}


def _snapshot(method, model, prompt):
    return prompt.detach().clone() if method == "prompt-grad" else copy.deepcopy(model.state_dict())


def _restore(method, model, prompt, state):
    if method == "prompt-grad":
        with torch.no_grad():
            prompt.copy_(state)
    else:
        model.load_state_dict(state)


def markdown(report: dict) -> str:
    """Test score per task and method; trained runs show their epochs and batch size."""
    methods = METHODS
    lines = ["| task | metric | test n | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for task, res in report["tasks"].items():
        cells = []
        for m in methods:
            r = res.get(m)
            if r is None:
                cells.append("not run")
            else:
                how = f" ({r['epochs']} ep, batch {r['batch']}, best dev {r['best_dev']:.3f})" if "epochs" in r else ""
                cells.append(f"{r['test']:.3f}{how}")
        lines.append(f"| {task} | {res['metric']} | {res['n_test']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs-sft", type=int, default=5)
    p.add_argument("--epochs-prompt", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=50)
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--out", default="reports/baseline_accuracy.json")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model_dir = resolve_model(args.model)
    arch = arch_from_config(load_config(model_dir))
    if arch.family != "causal":
        print("error: this script trains causal LMs (smollm2 or a Llama-style checkpoint)", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(model_dir)
    pad_id = pad_token(tokenizer, arch)
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {"tasks": {}}
    report["config"] = {**vars(args), "lr": LR, "model_dir": str(model_dir), "torch": torch.__version__}
    jobs = [(t, m) for t in args.tasks for m in args.methods]
    bar = tqdm(jobs, desc="baselines", unit="run")
    for task, method in bar:
        bar.set_description(f"{task} {method}")
        data = TaskData(task, tokenizer, arch, args.k, args.seed, args.test_limit, args.data)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        scorer = Scorer(model, arch.prefix_tokens, pad_id)
        started = time.perf_counter()
        if method == "zero-shot":
            result = {"test": scorer.evaluate(data.splits["test"], data.label_ids, kind=data.metric),
                      "dev": [scorer.evaluate(data.splits["dev"], data.label_ids, kind=data.metric)]}
        else:
            epochs = args.epochs_sft if method == "sft" else args.epochs_prompt
            result = train(method, scorer, data, epochs, args.batch, args.seed, args.prompt_len, bar)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        entry = report["tasks"].setdefault(task, {})
        entry.update({"metric": data.metric, "n_test": len(data.splits["test"][2]), method: result})
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1) + "\n")  # after every run: nothing lost on a kill
        tqdm.write(f"{task:7s} {method:12s} test {result['test']:.3f}  ({result['wall_s']:.0f} s)")
    text = markdown(report)
    out_path.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
