"""`secptune tune`: prepare the owner's texts, run the tuner plain or secure, write reports."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from mpc import approx
from rfa.config import attention_config
from secptune import owner, report, secure
from secptune.arch import arch_from_config
from secptune.batch import Batch
from secptune.checkpoints import load_config, load_tokenizer, resolve_model
from secptune.devices import resolve_device
from secptune.errors import InputError
from secptune.fewshot import held_out, sample_k_shot
from secptune.guarded_job import run_guarded
from secptune.hf_session import HFSession
from secptune.infer import attention_for, check_mode, check_precision, pad_token
from secptune.inputs import (
    Example,
    Template,
    build_batch,
    check_lengths,
    encode,
    load_jsonl,
    verbalizer_ids,
    verbalizer_onehot,
)
from secptune.plain import plain_session
from secptune.privacy import secure_view
from secptune.split_job import SplitOptions, build_split, importance_table, make_recorder, public_header, public_pool
from secptune.tasks import get_task, task_file
from secptune.tune import TextSets, TuneConfig, tune_program


def task_examples(cfg: TuneConfig) -> tuple[list[Example], list[Example], list[Example]]:
    pool = load_jsonl(cfg.train or task_file(cfg.task, "train", cfg.data))
    train, dev = sample_k_shot(pool, cfg.k, cfg.seed)
    if cfg.test:
        test = load_jsonl(cfg.test, cfg.test_limit)
    else:
        try:
            test = load_jsonl(task_file(cfg.task, "test", cfg.data), cfg.test_limit)
        except InputError:  # Yelp ships a few-shot pool only: test on the rest of it
            test = held_out(pool, train + dev, cfg.test_limit or 500, cfg.seed)
    return train, dev, test


def build_texts(cfg: TuneConfig) -> tuple[Path, TextSets, str]:
    """Owner side: tokenizer + config only; returns (model dir, text sets, loss kind)."""
    spec = get_task(cfg.task)
    model_dir = resolve_model(cfg.model)
    arch = arch_from_config(load_config(model_dir))
    tokenizer = load_tokenizer(model_dir)
    template = Template(cfg.template or spec.templates[arch.family], arch.family)
    words = cfg.verbalizer or list(spec.verbalizers[arch.family])
    label_ids = verbalizer_ids(tokenizer, words, template)
    train, dev, test = task_examples(cfg)
    pad_id = pad_token(tokenizer, arch)
    prompt = torch.zeros(cfg.prompt_len, arch.hidden, dtype=torch.float64)
    empty = torch.zeros(0, arch.hidden, dtype=torch.float64)

    def batches(examples: list[Example], with_prompt: bool, whole: bool = False) -> list[Batch]:
        enc = encode(tokenizer, examples, template, arch.prefix_tokens)
        check_lengths(enc, arch, cfg.prompt_len if with_prompt else 0, cfg.model)
        rows = list(range(len(examples)))
        size = len(rows) if whole else cfg.batch_size
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        return [build_batch(enc, c, prompt if with_prompt else empty, arch, pad_id, cfg.pad_bucket) for c in chunks]

    texts = TextSets(
        train=batches(train, True, whole=True)[0],  # one text set: one forward per generation
        train_labels=[int(e.label) for e in train],
        dev=batches(dev, True),
        dev_labels=[int(e.label) for e in dev],
        test=batches(test, True),
        test_labels=[int(e.label) for e in test],
        dev_zero=batches(dev, False),
        test_zero=batches(test, False),
        verbalizer=verbalizer_onehot(label_ids, arch.vocab_size),
        hidden=arch.hidden,
        metric=spec.metric,
    )
    return model_dir, texts, cfg.loss or spec.loss


def split_options(cfg: TuneConfig) -> SplitOptions:
    return SplitOptions(split_layer=cfg.split_layer, noise=cfg.noise, eta=cfg.eta, release=cfg.release,
                        record_view=cfg.record_view)


def privtune_session(cfg: TuneConfig, model_dir: Path, texts: TextSets, out_dir: str):
    """The split session of ``--mode privtune`` and its view recorder (or None)."""
    opts = split_options(cfg)
    opts.check()
    arch = arch_from_config(load_config(model_dir))
    tokenizer = load_tokenizer(model_dir)
    spec = get_task(cfg.task)
    template_text = cfg.template or spec.templates[arch.family]
    train, dev, test = task_examples(cfg)
    importance = None
    if opts.noise == "privtune":
        pool = public_pool(cfg.task, cfg.data, exclude={ex.text for ex in train + dev + test})
        importance = importance_table(tokenizer, Template(template_text, arch.family), pool,
                                      texts.verbalizer.shape[0], arch.prefix_tokens)
    words = cfg.verbalizer or list(spec.verbalizers[arch.family])
    header = public_header(cfg.model, cfg.task, cfg.data, template_text, words, opts, cfg.prompt_len)
    rows = {id(b): exs for b, exs in _text_set_examples(cfg, texts)}
    recorder = make_recorder(out_dir, opts, header, rows, tokenizer)
    precision = cfg.precision if cfg.precision else "float32"
    return build_split(model_dir, texts.verbalizer, opts, importance, precision, recorder), recorder


def _text_set_examples(cfg: TuneConfig, texts: TextSets) -> list:
    """(batch, its examples) for every text set of a tuning run (the owner's truth)."""
    train, dev, test = task_examples(cfg)
    pairs = [(texts.train, train)]
    for batches, examples in ((texts.dev, dev), (texts.dev_zero, dev), (texts.test, test), (texts.test_zero, test)):
        pairs += [(b, examples[i * cfg.batch_size : (i + 1) * cfg.batch_size]) for i, b in enumerate(batches)]
    return pairs


def secure_record(cfg: TuneConfig, model_dir: Path, texts: TextSets, out_dir: str):
    """``--record-view N`` in secure mode: the server's recorder spec and the owner's truth."""
    if not cfg.record_view:
        return None
    if cfg.record_view < 0:
        raise InputError(f"--record-view takes a number of texts, not {cfg.record_view}")
    arch = arch_from_config(load_config(model_dir))
    spec = get_task(cfg.task)
    header = secure_view.secure_header(cfg.model, cfg.task, cfg.data, cfg.template or spec.templates[arch.family],
                                       cfg.verbalizer or list(spec.verbalizers[arch.family]), cfg.prompt_len,
                                       cfg.attention, cfg.batch_size, cfg.pad_bucket)
    return secure_view.recorders(out_dir, cfg.record_view, header, _text_set_examples(cfg, texts),
                                 load_tokenizer(model_dir))


def run_tune(cfg: TuneConfig, out_dir: str, resume: bool = False, show_progress: bool = True, network=None) -> dict:
    """Run one tuning job and write report.json / report.md / curves.png into ``out_dir``.

    ``network`` (:class:`mpc.net.Network`): secure mode with the server and dealer on
    other hosts (``secptune party``); this process is the data owner."""
    if cfg.mode == "guarded":
        return _run_guarded(cfg, out_dir, show_progress)
    check_mode(cfg.mode, cfg.exact)
    check_precision(cfg.mode, cfg.exact, cfg.precision, cfg.check_oracle)
    cfg.attention = attention_for(cfg.mode, cfg.exact, cfg.attention)
    attention = attention_config(cfg.attention)
    if cfg.mode == "secure" and cfg.device not in (None, "cpu"):
        raise InputError("--device cuda runs plain mode only: the secure run's ring arithmetic is CPU code in this "
                         "version; use --mode plain --device cuda, or --device cpu")
    device = resolve_device(cfg.device)
    model_dir, texts, loss = build_texts(cfg)
    cfg.loss = loss
    started = time.perf_counter()
    args = (cfg, texts, out_dir, resume, show_progress)
    if cfg.mode == "privtune":
        session, recorder = privtune_session(cfg, model_dir, texts, out_dir)
        result = tune_program(session, *args)
        if recorder is not None:
            recorder.write()
        server_forwards = None
        totals = {"owner": {"bytes": session.sent_bytes, "rounds": session.rounds},
                  "server": {"bytes": session.received_bytes, "rounds": session.rounds},
                  "dealer": {"bytes": 0, "rounds": 0}}
    elif cfg.mode == "plain":
        session = HFSession(model_dir, texts.verbalizer, device=device) if cfg.exact else plain_session(
            model_dir, texts.verbalizer, approx.ApproxConfig.from_dict(cfg.cfg), attention, device=device,
            precision=cfg.precision or "float64", check_oracle=cfg.check_oracle,
        )
        result = tune_program(session, *args)
        server_forwards = None
        totals = {"owner": {"bytes": 0, "rounds": 0}, "server": {"bytes": 0, "rounds": 0}, "dealer": {"bytes": 0, "rounds": 0}}
    else:
        request = secure.OwnerRequest(
            labels=texts.verbalizer.shape[0],
            cfg=cfg.cfg,
            attention=attention.as_dict(),
            expected_vocab=texts.verbalizer.shape[1],
        )
        record = secure_record(cfg, model_dir, texts, out_dir)
        if network is not None:
            if record is not None:
                raise InputError("--record-view with --mode secure records the server's view on this machine: "
                                 "run without --peers")
            results = owner.run_remote(tune_program, args, request, texts.verbalizer, network)
        else:
            view, truth = record if record is not None else (None, None)
            results = owner.run_local(str(model_dir), tune_program, args, request, texts.verbalizer, view=view,
                                      truth=truth)
        result = results["owner"].value["result"]
        totals = {role: r.traffic for role, r in results.items()}
        server_forwards = (results["server"].value or {}).get("forwards") if network is None else None
    wall = time.perf_counter() - started + result["earlier_wall_s"]
    out = report.write_tune_report(Path(out_dir), cfg, result, totals, wall, server_forwards)
    torch.save(result["prompt"], Path(out_dir) / "prompt.pt")
    return out


def _run_guarded(cfg: TuneConfig, out_dir: str, show_progress: bool) -> dict:
    """``--mode guarded`` (secptune.guarded): adapters tuned by gradient descent, no prompt."""
    if cfg.exact or cfg.precision == "float64" or cfg.check_oracle:
        raise InputError("--exact, --check-oracle and --precision float64 are for --mode plain; --mode guarded runs "
                         "the original non-linearities in float32")
    cfg = replace(cfg, popsize=1, prompt_len=0)  # one API call = one tuning step; adapters, not a prompt
    started = time.perf_counter()
    result, totals, _ = run_guarded(cfg, task_examples(cfg), out_dir, show_progress)
    return report.write_tune_report(Path(out_dir), cfg, result, totals, time.perf_counter() - started)
