"""`secptune tune --mode guarded`: build the owner's texts, the client and server pieces of
:mod:`secptune.guarded`, tune the adapters by gradient descent, score dev and test through
the real backbone, record the server's view, and write the run's reports (the same
report.json shape as the other modes: one API call = one tuning step on a mini-batch)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from secptune.arch import arch_from_config
from secptune.checkpoints import load_config, load_hf_model, load_tokenizer, resolve_model
from secptune.errors import InputError
from secptune.guarded import (
    FLOAT_BITS,
    VARIANTS,
    GuardedClient,
    GuardedServer,
    GuardedSession,
    check_cut,
    default_out_layers,
    harden_input_adapter,
)
from secptune.infer import pad_token
from secptune.inputs import Template, build_batch, check_lengths, encode, verbalizer_ids, verbalizer_onehot
from secptune.plain import resolve_precision
from secptune.server.prepare import prepare_server_model
from secptune.split_job import make_recorder
from secptune.tasks import get_task
from secptune.tune import TuneConfig, metric

WHITEBOX = "whitebox.pt"  # beside the view: the client's input adapter (the attacks' white-box assumption)


@dataclass
class GuardedOptions:
    """The flags of ``--mode guarded`` (public: recorded with the view)."""

    variant: str = "online"
    dcor: float = 0.0
    quant_bits: int = FLOAT_BITS
    in_layers: int = 1
    out_layers: int | None = None  # None: default_out_layers
    epochs: int = 10
    lr: float = 1e-3
    train_batch: int = 8
    harden_steps: int = 100
    emulator_keep: int = 2
    record_view: int = 0

    @staticmethod
    def of(cfg: TuneConfig) -> "GuardedOptions":
        return GuardedOptions(variant=cfg.variant, dcor=cfg.dcor, quant_bits=cfg.quant_bits, in_layers=cfg.in_layers,
                              out_layers=cfg.out_layers, epochs=cfg.epochs, lr=cfg.lr, train_batch=cfg.train_batch,
                              harden_steps=cfg.harden_steps, emulator_keep=cfg.emulator_keep,
                              record_view=cfg.record_view)

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"--variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--train-batch", self.train_batch, 1),
                                 ("--emulator-keep", self.emulator_keep, 1), ("--harden-steps", self.harden_steps, 0),
                                 ("--record-view", self.record_view, 0)):
            if value < low:
                raise InputError(f"{flag} must be at least {low}, not {value}")
        if self.dcor < 0 or not self.lr > 0:
            raise InputError("--dcor must be 0 or more and --lr positive")
        if not (self.quant_bits == FLOAT_BITS or 1 <= self.quant_bits <= 16):
            raise InputError(f"--quant-bits must be 1..16 or 32, not {self.quant_bits}")

    def header(self) -> dict:
        return {"variant": self.variant, "dcor": self.dcor, "quant_bits": self.quant_bits, "in_layers": self.in_layers,
                "out_layers": self.out_layers, "adapters": "full layers (no LoRA)", "epochs": self.epochs,
                "lr": self.lr, "harden_steps": self.harden_steps, "emulator_keep": self.emulator_keep}


class Texts:
    """The owner's texts as batches without prompt slots: training mini-batches and scoring chunks."""

    def __init__(self, cfg: TuneConfig, examples: tuple, model_dir: Path, train_batch: int):
        spec = get_task(cfg.task)
        self.arch = arch_from_config(load_config(model_dir))
        self.tokenizer = load_tokenizer(model_dir)
        self.template_text = cfg.template or spec.templates[self.arch.family]
        self.template = Template(self.template_text, self.arch.family)
        self.words = cfg.verbalizer or list(spec.verbalizers[self.arch.family])
        self.verbalizer = verbalizer_onehot(verbalizer_ids(self.tokenizer, self.words, self.template), self.arch.vocab_size)
        self.metric_kind = spec.metric
        pad_id = pad_token(self.tokenizer, self.arch)
        empty = torch.zeros(0, self.arch.hidden, dtype=torch.float64)
        self.sets, self.rows = {}, {}
        for name, exs, size in zip(("train", "dev", "test"), examples, (train_batch, cfg.batch_size, cfg.batch_size)):
            enc = encode(self.tokenizer, exs, self.template, self.arch.prefix_tokens)
            check_lengths(enc, self.arch, 0, cfg.model)
            chunks = [list(range(i, min(i + size, len(exs)))) for i in range(0, len(exs), size)]
            batches = [build_batch(enc, c, empty, self.arch, pad_id, cfg.pad_bucket) for c in chunks]
            labels = [torch.tensor([int(exs[r].label) for r in c]) for c in chunks]
            self.sets[name] = list(zip(batches, labels))
            for b, c in zip(batches, chunks):
                self.rows[id(b)] = [exs[r] for r in c]


def public_header(cfg: TuneConfig, texts: Texts, opts: GuardedOptions) -> dict:
    """What the server knows about a guarded run (and so what every attack may assume)."""
    return {"mode": "guarded", "model": cfg.model, "task": cfg.task, "data": cfg.data, "template": texts.template_text,
            "verbalizer": texts.words, "split_layer": opts.in_layers, "release": "per-step",
            "mechanism": {"noise": "dchi", "eta": "inf"}, "prompt_len": 0, "attack_release": "last",
            "guarded": opts.header()}


def _evaluate(session: GuardedSession, ids: list[int], sets: list, kind: str) -> float:
    preds, labels = [], []
    for tid, (_, y) in zip(ids, sets):
        preds += session.scores(tid).argmax(-1).tolist()
        labels += y.tolist()
    return metric(preds, labels, kind)


def _zero_shot(server_model, texts: Texts, opts: GuardedOptions, dtype) -> dict:
    """The untuned adapters through the same split and wire: a baseline measured by a session of
    its own (not the run's traffic, not in its view), so the view's first texts are the tuning's."""
    client = GuardedClient(server_model, texts.verbalizer, opts.in_layers, opts.out_layers, dtype)
    server = GuardedServer(server_model, opts.in_layers, opts.out_layers, dtype)
    session = GuardedSession(client, server, "gradfree", opts.quant_bits, 0.0, opts.lr)
    out = {}
    for name in ("dev", "test"):
        ids = [session.load_texts(b) for b, _ in texts.sets[name]]
        out[name] = _evaluate(session, ids, texts.sets[name], texts.metric_kind)
    return out


def run_guarded(cfg: TuneConfig, examples: tuple, out_dir: str, show_progress: bool = True) -> tuple[dict, dict, GuardedSession]:
    """Tune, score and record one guarded run; returns (result, totals, session) for the report."""
    opts = GuardedOptions.of(cfg)
    opts.check()
    model_dir = resolve_model(cfg.model)
    texts = Texts(cfg, examples, model_dir, opts.train_batch)
    server_model = prepare_server_model(load_hf_model(model_dir))
    if opts.out_layers is None:
        opts.out_layers = default_out_layers(server_model.arch.layers)
    check_cut(server_model, opts.in_layers, opts.out_layers)
    dtype = resolve_precision(cfg.precision or "float32")
    recorder = make_recorder(out_dir, opts, public_header(cfg, texts, opts), texts.rows, texts.tokenizer)
    client = GuardedClient(server_model, texts.verbalizer, opts.in_layers, opts.out_layers, dtype)
    server = GuardedServer(server_model, opts.in_layers, opts.out_layers, dtype, recorder)
    order_gen = torch.Generator().manual_seed(cfg.seed)  # public: the order of the training batches
    zero = _zero_shot(server_model, texts, opts, dtype)
    started = time.perf_counter()
    hardening = []
    if opts.variant == "gradfree":
        train_inputs = [(b.token_onehot.ids, b.pred_onehot) for b, _ in texts.sets["train"]]
        with tqdm(total=opts.harden_steps, desc="hardening", disable=not show_progress) as bar:
            hardening = harden_input_adapter(client, train_inputs, opts.dcor, opts.harden_steps, opts.lr, bar)
    session = GuardedSession(client, server, opts.variant, opts.quant_bits, opts.dcor, opts.lr, recorder,
                             server_model, opts.emulator_keep)
    ids = {name: [session.load_texts(b) for b, _ in sets] for name, sets in texts.sets.items()}
    history = []
    total_steps = opts.epochs * len(ids["train"])
    with tqdm(total=total_steps, desc=f"guarded {opts.variant}", disable=not show_progress) as bar:
        for epoch in range(opts.epochs):
            losses = []
            for j in torch.randperm(len(ids["train"]), generator=order_gen).tolist():
                losses.append(session.step(ids["train"][j], texts.sets["train"][j][1]))
                bar.update(1)
            dev = _evaluate(session, ids["dev"], texts.sets["dev"], texts.metric_kind)
            history.append({"gen": epoch + 1, "best_loss": min(losses), "mean_loss": sum(losses) / len(losses),
                            "dev_accuracy": dev})
            bar.set_postfix(loss=f"{history[-1]['mean_loss']:.3f}", dev=f"{dev:.3f}")
    tuning_s = time.perf_counter() - started
    final_scores = {name: _evaluate(session, ids[name], texts.sets[name], texts.metric_kind)
                    for name in ("train", "dev", "test")}  # final weights: every recorded text's last release
    up, down, rounds = session.traffic()
    final = {"metric": texts.metric_kind, "best_generation": opts.epochs,
             "dev": {"zero_shot": zero["dev"], "tuned": final_scores["dev"]},
             "test": {"zero_shot": zero["test"], "tuned": final_scores["test"]},
             "train_tuned": final_scores["train"], "hardening_loss": hardening[-1:] or None,
             "guarded": {**opts.header(), "tuning_s": tuning_s, "steps": len(session.forward_log)}}
    if recorder is not None:
        recorder.write()
        torch.save({"input_adapter": client.inp.state(), "layers": client.inp.layers},
                   Path(out_dir) / "view" / WHITEBOX)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    torch.save({"input": client.inp.state(), "output": client.out.state()}, Path(out_dir) / "adapters.pt")
    result = {"history": history, "final": final, "train_forwards": session.forward_log, "earlier_wall_s": 0.0,
              "api_calls": len(session.forward_log)}
    totals = {"owner": {"bytes": up, "rounds": rounds}, "server": {"bytes": down, "rounds": rounds},
              "dealer": {"bytes": 0, "rounds": 0}}
    return result, totals, session
