"""`secptune infer`: score label words for a data file, plaintext or under MPC.

The owner side (this process) only ever loads the model's config and tokenizer.
In ``plain`` mode this process also loads the weights — plain mode is the
non-private oracle and baseline, run by someone who holds both.  In ``secure``
mode the weights are loaded by the server process alone.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mpc import approx, costmodel
from rfa.config import AttentionConfig, SOFTMAX, attention_config
from secptune import owner, secure
from secptune.arch import Arch, arch_from_config
from secptune.batch import Batch
from secptune.checkpoints import load_config, load_tokenizer, resolve_model
from secptune.errors import InputError
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
from secptune.plain import PlainSession, plain_session
from secptune.privacy import secure_view
from secptune.scoring import score_batches
from secptune.split_job import SplitOptions, build_split, importance_table, make_recorder, public_header, public_pool
from secptune.tune import losses


@dataclass
class InferOptions:
    model: str
    data: str
    template: str
    verbalizer: list[str]
    mode: str = "plain"
    attention: str | None = None  # None: attention_for's default
    exact: bool = False
    prompt_len: int = 0
    prompt_file: str | None = None
    prompt_seed: int = 0
    prompt_std: float = 0.02
    limit: int | None = None
    batch_size: int = 8
    pad_bucket: int = 0  # pad each batch's length to a multiple of this (0: to its longest text)
    precision: str | None = None  # plain approximations: float64 (None: the oracle) or float32
    check_oracle: int = 0  # float32: score every k-th batch with the float64 oracle too (0: never)
    cfg: approx.ApproxConfig = field(default_factory=approx.ApproxConfig)
    network: object = None  # mpc.net.Network: server and dealer on other hosts (secure mode)
    split: SplitOptions = field(default_factory=SplitOptions)  # --mode privtune
    task: str | None = None  # privtune: its train split is the public pool
    out: str | None = None  # run directory: result.json and, with --record-view, view/


@dataclass
class Prepared:
    """Everything the owner derives from data, template and tokenizer (plaintext)."""

    model_dir: Path
    arch: Arch
    examples: list[Example]
    batches: list[Batch]
    verbalizer: torch.Tensor
    label_ids: list[int]


def make_prompt(opts: InferOptions, hidden: int) -> torch.Tensor:
    """The prompt embeddings [P, H]: from a file, or seeded random, or empty."""
    if opts.prompt_file:
        path = Path(opts.prompt_file)
        if not path.is_file():
            raise InputError(f"prompt file {opts.prompt_file!r} does not exist")
        prompt = torch.load(path, weights_only=True).double()
        if prompt.dim() != 2 or prompt.shape[1] != hidden:
            raise InputError(f"prompt file has shape {tuple(prompt.shape)}; expected [prompt_len, {hidden}]")
        return prompt
    gen = torch.Generator().manual_seed(opts.prompt_seed)
    return torch.randn(opts.prompt_len, hidden, generator=gen, dtype=torch.float64) * opts.prompt_std


def pad_token(tokenizer, arch: Arch) -> int:
    """Padding token.  Causal LMs pad after the scored token, so content is irrelevant;
    EOS is used because a pad row is often all-zero, which would push RMSNorm far
    outside its approximation range for no reason."""
    order = ("eos_token_id", "pad_token_id") if arch.family == "causal" else ("pad_token_id", "eos_token_id")
    for attr in order:
        if getattr(tokenizer, attr, None) is not None:
            return getattr(tokenizer, attr)
    return 0


MODES = ("plain", "secure", "privtune")


def check_mode(mode: str, exact: bool) -> None:
    """--mode and --exact, as `infer` and `tune` both take them."""
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    if exact and mode != "plain":
        raise InputError(f"--exact is for --mode plain only: --mode {mode} fixes its own non-linearities")


# The default --attention: RFA, in the layers the server prepared (rfa.config.DEFAULT_RFA).  Its
# feature exponential saturates above its knee up to a wide reach (mpc.approx.ApproxConfig), so
# task text and prompts the fit never saw stay in the secure range (reports/prepare/rfa_range.json).
DEFAULT_ATTENTION = "rfa"


def attention_for(mode: str, exact: bool, attention: str | None) -> str:
    """``--attention`` as it will run: the one given, or the default — ``DEFAULT_ATTENTION``
    wherever the secure run's approximations run (secure mode, and plain mode as its oracle),
    the model's own softmax where they do not (``--exact``, and privtune's split learning,
    which runs the original model)."""
    if attention is None:
        return "softmax" if exact or mode == "privtune" else DEFAULT_ATTENTION
    if exact and attention != "softmax":
        raise InputError("--exact runs the model's own softmax attention; leave out --attention rfa")
    return attention


def check_precision(mode: str, exact: bool, precision: str | None, check_oracle: int | None) -> None:
    """--precision and --check-oracle, as `infer` and `tune` both take them: they choose how the
    plain run computes the secure run's approximations, so they need --mode plain without --exact."""
    given = [flag for flag, v in (("--precision", precision), ("--check-oracle", check_oracle)) if v]
    if "--check-oracle" in given and mode == "privtune":
        raise InputError("--check-oracle: for --mode plain only (privtune runs the original non-linearities)")
    if given and mode == "secure":
        raise InputError(f"{' and '.join(given)}: for --mode plain only (the secure run computes in fixed point)")
    if given and exact:
        raise InputError(f"{' and '.join(given)}: for the approximations only; --exact runs the original "
                         "non-linearities (leave out --exact, or these flags)")


def prepare(opts: InferOptions, examples: list[Example] | None = None) -> Prepared:
    """Resolve the model, tokenize and lay out the owner's inputs (no weights loaded)."""
    check_mode(opts.mode, opts.exact)
    check_precision(opts.mode, opts.exact, opts.precision, opts.check_oracle)
    attention_config(attention_for(opts.mode, opts.exact, opts.attention))  # a clear error, before any work
    model_dir = resolve_model(opts.model)
    arch = arch_from_config(load_config(model_dir))
    tokenizer = load_tokenizer(model_dir)
    template = Template(opts.template, arch.family)
    label_ids = verbalizer_ids(tokenizer, opts.verbalizer, template)
    examples = examples if examples is not None else load_jsonl(opts.data, opts.limit)
    enc = encode(tokenizer, examples, template, arch.prefix_tokens)
    prompt = make_prompt(opts, arch.hidden)
    check_lengths(enc, arch, prompt.shape[0], opts.model)
    pad_id = pad_token(tokenizer, arch)
    rows = list(range(len(examples)))
    chunks = [rows[i : i + opts.batch_size] for i in range(0, len(rows), opts.batch_size)]
    batches = [build_batch(enc, chunk, prompt, arch, pad_id, opts.pad_bucket) for chunk in chunks]
    return Prepared(model_dir, arch, examples, batches, verbalizer_onehot(label_ids, arch.vocab_size), label_ids)


def plain_scores(
    prep: Prepared, exact: bool, cfg: approx.ApproxConfig, attention: AttentionConfig = SOFTMAX, model=None
) -> tuple[torch.Tensor, dict]:
    """Scores from the plaintext model (exact, or with the secure run's approximations)."""
    session = PlainSession(prep.model_dir, prep.verbalizer, exact, cfg, attention, model)
    return score_batches(session, prep.batches), session.range_warnings


def secure_scores(
    prep: Prepared,
    cfg: approx.ApproxConfig,
    canaries: dict | None = None,
    network=None,
    attention: AttentionConfig = SOFTMAX,
    range_policy: str = "report",
    launch=None,
    record=None,
):
    """Scores from a secure run, with each party's traffic: three local processes, or
    (``network``) this host as the data owner and the server and dealer elsewhere
    (``launch``: how the local run starts its parties, see :func:`secptune.owner.run_local`).
    ``range_policy``: what the owner does when a forward's sampled range check fails
    ("report": mark it in the forward log, see :func:`secptune.owner.range_events`;
    "stop": raise :class:`secptune.errors.RangeCheckError`); ``record``: (view spec, truth
    recorder) of ``--record-view`` (:func:`secptune.privacy.secure_view.recorders`)."""
    request = secure.OwnerRequest(
        labels=len(prep.label_ids), cfg=asdict(cfg), attention=attention.as_dict(), expected_vocab=prep.arch.vocab_size
    )
    # a forward whose sampled range check fails is reported (range_events), not fatal
    args = (prep.batches, range_policy)
    if network is not None:
        if record is not None:
            raise InputError("--record-view with --mode secure records the server's view on this machine: "
                             "run without --peers")
        results = owner.run_remote(score_batches, args, request, prep.verbalizer, network)
    else:
        view, truth = record if record is not None else (None, None)
        results = owner.run_local(str(prep.model_dir), score_batches, args, request, prep.verbalizer, canaries,
                                   launch=launch, view=view, truth=truth)
    return results["owner"].value["result"], {role: r.traffic for role, r in results.items()}, results


def privtune_scores(opts: InferOptions, prep: Prepared):
    """Scores of ``--mode privtune`` (split learning with noisy representations), each party's
    traffic and the forward seconds; with ``--record-view N`` the server's view is written
    to ``opts.out``/view."""
    split = opts.split
    split.check()
    tokenizer = load_tokenizer(prep.model_dir)
    template = Template(opts.template, prep.arch.family)
    owned = {ex.text for ex in prep.examples}
    importance = None
    if split.noise == "privtune":
        pool = public_pool(opts.task, None, exclude=owned)
        importance = importance_table(tokenizer, template, pool, len(prep.label_ids), prep.arch.prefix_tokens)
    header = public_header(opts.model, opts.task, None, opts.template, opts.verbalizer, split, prep.batches[0].prompt.shape[-2])
    rows = {id(b): prep.examples[i * opts.batch_size : (i + 1) * opts.batch_size] for i, b in enumerate(prep.batches)}
    recorder = make_recorder(opts.out, split, header, rows, tokenizer)
    session = build_split(prep.model_dir, prep.verbalizer, split, importance, opts.precision, recorder)
    scores = score_batches(session, prep.batches)
    if recorder is not None:
        recorder.write()
    comm = {"owner": {"bytes": session.sent_bytes, "rounds": session.rounds},
            "server": {"bytes": session.received_bytes, "rounds": session.rounds},
            "dealer": {"bytes": 0, "rounds": 0}}
    return scores, comm, sum(f["wall_s"] for f in session.forward_log)


def secure_record(opts: InferOptions, prep: Prepared):
    """``--record-view N`` in secure mode: the server's recorder spec and the owner's truth."""
    if not opts.split.record_view:
        return None
    if opts.split.record_view < 0:
        raise InputError(f"--record-view takes a number of texts, not {opts.split.record_view}")
    header = secure_view.secure_header(opts.model, opts.task, None, opts.template, opts.verbalizer,
                                       prep.batches[0].prompt.shape[-2], attention_for(opts.mode, opts.exact, opts.attention),
                                       opts.batch_size, opts.pad_bucket)
    pairs = [(b, prep.examples[i * opts.batch_size : (i + 1) * opts.batch_size]) for i, b in enumerate(prep.batches)]
    return secure_view.recorders(opts.out, opts.split.record_view, header, pairs, load_tokenizer(prep.model_dir))


def _labelled_losses(session, prep: Prepared, batch_size: int) -> None:
    """Cross-entropy of each fully labelled batch, so the oracle check compares losses as well
    as scores (text set i is batch i: :func:`secptune.scoring.score_batches` loads them in order)."""
    for i in range(len(prep.batches)):
        labels = [ex.label for ex in prep.examples[i * batch_size : (i + 1) * batch_size]]
        if None not in labels:
            target = torch.tensor(labels)
            session.set_loss(i, lambda s, target=target: losses(s.view(1, len(target), -1), target, "ce"))


def flagged_examples(calls: list[int], batch_size: int, examples: int) -> list[int]:
    """The examples of the batches the secure range check flagged (batch i holds examples
    i·batch_size onwards), so result.json says which predictions may be wrong: a wrapped row's
    scores are arbitrary, yet its label can still match by chance (issue 26's secure check)."""
    return [j for i in calls for j in range(i * batch_size, min((i + 1) * batch_size, examples))]


def summarize(prep: Prepared, scores: torch.Tensor) -> dict:
    pred = scores.argmax(-1).tolist()
    labels = [ex.label for ex in prep.examples]
    known = [(p, y) for p, y in zip(pred, labels) if y is not None]
    accuracy = sum(p == y for p, y in known) / len(known) if known else None
    return {
        "scores": scores.tolist(),
        "pred": pred,
        "labels": labels,
        "accuracy": accuracy,
    }


def run_infer(opts: InferOptions) -> dict:
    started = time.perf_counter()
    opts = replace(opts, attention=attention_for(opts.mode, opts.exact, opts.attention))
    prep = prepare(opts)
    events = None  # secure mode: secptune.owner.range_events of the owner's forwards
    oracle = None  # --check-oracle: how the float32 run compared with the float64 oracle
    if opts.mode == "plain" and not opts.exact:
        session = plain_session(prep.model_dir, prep.verbalizer, opts.cfg, attention_config(opts.attention),
                                precision=opts.precision or "float64", check_oracle=opts.check_oracle)
        if opts.check_oracle:
            _labelled_losses(session, prep, opts.batch_size)
        scores, warnings = score_batches(session, prep.batches), session.range_warnings
        oracle = session.summary() if opts.check_oracle else None
        comm = {role: {"bytes": 0, "rounds": 0} for role in ("owner", "server", "dealer")}
        forward_s = 0.0
    elif opts.mode == "plain":
        scores, warnings = plain_scores(prep, opts.exact, opts.cfg, attention_config(opts.attention))
        comm = {role: {"bytes": 0, "rounds": 0} for role in ("owner", "server", "dealer")}
        forward_s = 0.0
    elif opts.mode == "privtune":
        scores, comm, forward_s = privtune_scores(opts, prep)
        warnings = {}
    else:
        attention = attention_config(opts.attention)
        scores, comm, results = secure_scores(prep, opts.cfg, network=opts.network, attention=attention,
                                              record=secure_record(opts, prep))
        forward_s = sum(f["wall_s"] for f in results["owner"].value["forwards"])
        warnings = {}
        events = owner.range_events(results["owner"].value["forwards"])
        events["examples"] = flagged_examples(events["calls"], opts.batch_size, len(prep.examples))
        if events["out_of_range"]:
            print(
                f"secptune: warning: the secure range check found inputs outside an approximation's range in "
                f"{events['out_of_range']} of {len(prep.batches)} batches (batches {events['calls']}, examples "
                f"{events['examples']}); their scores may be wrong. Run the same command with --mode plain to see "
                "range_warnings.",
                file=sys.stderr,
            )
    out = summarize(prep, scores)
    out.update(
        mode=opts.mode,
        exact=opts.exact,
        precision=(opts.precision or "float64") if opts.mode == "plain" else None,
        oracle_check=oracle,
        attention=opts.attention,
        model=opts.model,
        examples=len(prep.examples),
        wall_s=time.perf_counter() - started,
        forward_s=forward_s,
        comm=comm,
        range_warnings=warnings,
        range_events=events,
    )
    if opts.mode == "privtune":
        out["split"] = asdict(opts.split)
        out["link_s"] = costmodel.link_times(comm)  # what a LAN/WAN link would add to the whole run
    if opts.out:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        (Path(opts.out) / "result.json").write_text(json.dumps(out, indent=1))
    return out
