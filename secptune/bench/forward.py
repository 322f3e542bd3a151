"""Time and count one secure (or plaintext) forward pass of a model: ``secptune bench forward``.

    secptune bench forward --model roberta-large-shape --seq 512 --batch 1 \\
        --mode secure --attention softmax --layers 1 --json

Models: a built-in name (tiny-llama, tiny-roberta, tiny-bert, smollm2), a local
checkpoint directory, or ``roberta-large-shape``: a randomly initialised
RobertaForMaskedLM with RoBERTa-large shapes (24 layers, hidden 1024, FFN 4096, 16
heads, 512 positions) but a small vocabulary (``--vocab``, default 4096) — the
embedding lookup happens once per text set, outside the forward measured here,
so the vocabulary size does not change the figures below.  ``--attention rfa``
runs random-feature attention (rfa.config.AttentionConfig; ``--features``,
``--num-features``) in place of the MPC softmax.

Inputs are random token ids (the owner's), ``--prompt-len`` random prompt
vectors after the first token, one scored position, no padding.  One forward =
``--batch`` sequences of ``--seq`` tokens (causal models: after the BOS prefix).

What is measured (secure mode), all for one forward pass after the session is set
up (weights shared and, by default, masked once; texts embedded):

* ``wall_s``: the owner's time for the forward (incl. revealing the scores);
  ``plain_wall_s``: the same forward in plaintext float64 with the same
  approximations, in this process, before the secure run (best of
  ``--plain-repeat``); ``ratio`` = their ratio;
* ``comm``: bytes and rounds each party *sent* (accounting at the transport):
  owner and server on the owner<->server channel (owner also: its requests to the
  dealer), dealer: the triples and masks it sent (counted as the owner receives
  them; the whole-session count is cross-checked against the dealer process's own,
  ``dealer_check``);
* ``ops``: per op type (accounting sections linear, attention, norm, activation;
  ``other``: the rest, e.g. the label-word product and the reveal): online bytes
  and rounds (the owner's; the server's are the same), dealer bytes/rounds, wall_s;
* ``lan_s``/``wan_s``: time the paper's LAN (3 Gbps, 0.8 ms) / WAN (100 Mbps,
  80 ms) add for this traffic (mpc.costmodel: busier party's online bytes and rounds);
  ``links_with_dealer_s``: the same with the dealer as a third host on the same link,
  answering each request during the forward (mpc.costmodel.link_times_with_dealer);
* ``all_wires_bytes``: every byte on every wire for the forward — both computing parties'
  sends (online and their requests to the dealer) and the dealer's;
* with ``--layers N`` (fewer than the model's), the same session also runs the
  forward with 0 layers; ``extrapolation`` gives per layer = (N-layer − 0-layer)/N
  and the full model = 0-layer + L × per layer, for comm, ops, wall_s, lan_s, wan_s.

``--profile`` adds ``profile``: a per-party time split (mpc.profiling) — cProfile's top
entries by own and by cumulative time for the owner's and the server's first measured
forward and for the dealer's whole session, the time each spent waiting (blocking reads,
lock waits), and the dealer's seconds per request kind (generating, sending).  With
``SECPTUNE_PROFILE=DIR`` in the environment the raw ``owner|server|dealer.pstats`` land in DIR.

``--no-fixed-weights`` turns off the fixed weight masks (mpc.fixed_weights), i.e.
CrypTen's Beaver products that open a weight-sized matrix per product: the
"before" figures.  The report also records its command, git revision and machine
(secptune.bench.common).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mpc import accounting, approx, costmodel, launcher, profiling
from mpc.roles import ROLES
from rfa.config import DEFAULT_RFA, AttentionConfig
from secptune.arch import arch_from_config
from secptune.batch import Batch, population_inputs
from secptune.commands import Command, command
from secptune.bench.common import BenchError, RING_MATMUL_ENV, provenance
from secptune.bench.options import ROBERTA_LARGE
from secptune.checkpoints import load_config, load_hf_model, resolve_model
from secptune.nonlinear import Nonlinear
from secptune.secure import Forward, OwnerRequest, SecureSession
from secptune.server.party import server_description
from secptune.server.prepare import prepare_server_model
from secptune.transformer import Transformer

ROBERTA_LARGE_SHAPE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    layer_norm_eps=1e-5, hidden_act="gelu",
)
OPS = ("linear", "attention", "norm", "activation")


@dataclass(frozen=True)
class ModelSpec:
    """How the server (and the plaintext baseline) build the model: deterministic."""

    name: str
    layers: int | None = None  # keep only the first N layers (None: all)
    vocab: int = 4096  # roberta-large-shape only
    seed: int = 0


# --------------------------------------------------------------------------- model


def full_layers(spec: ModelSpec) -> int:
    return int(model_config(replace(spec, layers=None)).num_hidden_layers)


def model_config(spec: ModelSpec):
    """The model's config (public; no weights), with ``spec.layers`` layers when given."""
    if spec.name == ROBERTA_LARGE:
        import transformers as tf

        config = tf.RobertaConfig(vocab_size=spec.vocab, **ROBERTA_LARGE_SHAPE)
    else:
        config = load_config(resolve_model(spec.name))
    if spec.layers is not None:
        config.num_hidden_layers = spec.layers
    return config


def build_model(spec: ModelSpec):
    """The HF model (server side), first ``spec.layers`` layers only when given."""
    if spec.name == ROBERTA_LARGE:
        import transformers as tf

        shape = dict(ROBERTA_LARGE_SHAPE)
        if spec.layers is not None:
            shape["num_hidden_layers"] = spec.layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return tf.RobertaForMaskedLM(tf.RobertaConfig(vocab_size=spec.vocab, **shape)).float().eval()
    model = load_hf_model(resolve_model(spec.name))
    if spec.layers is not None:
        base = model.base_model
        stack = base.encoder.layer if hasattr(base, "encoder") else base.layers
        if spec.layers > len(stack):
            raise BenchError(f"--layers {spec.layers}: {spec.name} has only {len(stack)} layers")
        del stack[spec.layers :]
        model.config.num_hidden_layers = spec.layers
    return model


def make_inputs(arch, seq: int, batch: int, prompt_len: int, seed: int):
    """The owner's plaintext inputs: a Batch of random tokens, and a 2-word verbalizer."""
    if prompt_len + 2 > seq:
        raise BenchError(f"--seq {seq} is too short for a {prompt_len}-token prompt")
    limit = arch.max_positions - len(arch.prefix_tokens)
    if seq > limit:
        raise BenchError(f"--seq {seq} exceeds what the model takes ({limit} tokens)")
    gen = torch.Generator().manual_seed(seed + 1)
    V, H, start = arch.vocab_size, arch.hidden, 1
    ids = torch.randint(0, V, (batch, seq), generator=gen)
    token = torch.nn.functional.one_hot(ids, V).double()
    token[:, start : start + prompt_len] = 0  # prompt slots
    pred = torch.zeros(batch, seq, dtype=torch.float64)
    pred[:, seq - 1 if arch.family == "causal" else seq // 2] = 1.0
    prompt = torch.randn(batch, prompt_len, H, generator=gen, dtype=torch.float64) * 0.02
    encoder = arch.family == "encoder"
    inputs = Batch(
        token_onehot=token,
        prompt=prompt,
        pred_onehot=pred,
        key_penalty=torch.zeros(batch, seq, dtype=torch.float64) if encoder else None,
        prompt_start=start,
    )
    verbalizer = torch.nn.functional.one_hot(torch.tensor([min(5, V - 2), min(6, V - 1)]), V).double()
    return inputs, verbalizer


def attention_config(args):
    """The public attention setting (rfa.config.AttentionConfig)."""
    if args.attention == "softmax":
        return AttentionConfig(kind="softmax")
    if args.features == "fitted":  # the product's RFA: the server's fitted maps in the layers it chooses
        return replace(DEFAULT_RFA, num_features=args.num_features)
    try:
        return AttentionConfig(kind="rfa", features=args.features, num_features=args.num_features)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


# --------------------------------------------------------------------------- plain


def plain_forward(spec: ModelSpec, inputs, verbalizer, attention, repeat: int = 3):
    """Scores, wall time (best of ``repeat``) and the attention as the server resolved it (its
    RFA layers chosen) of the plaintext forward with the secure run's approximations."""
    model = build_model(spec)
    server = prepare_server_model(model, attention)
    arch, weights, attention = server.arch, server.weights, server.attention
    del model
    net = Transformer(arch, weights, Nonlinear(attention=attention))
    with torch.no_grad():
        head = net.label_head(verbalizer)
        embeds = net.embed_tokens(inputs.token_onehot, inputs.type_onehot)
        batch = replace(inputs, token_onehot=None)
        best = float("inf")
        for _ in range(max(1, repeat)):
            started = time.perf_counter()
            x, b = population_inputs(embeds, batch, inputs.prompt[:1])
            scores = net.forward(x, b, head)
            best = min(best, time.perf_counter() - started)
        return scores, best, attention


# --------------------------------------------------------------------------- secure

def _snapshot() -> dict:
    log = accounting.log()
    return {"log": log.as_dict(), "from_dealer": log.from_dealer_dict(), "t": time.perf_counter()}


def _diff(before: dict, after: dict, attempts: int) -> dict:
    """Per-forward traffic of this process between two snapshots."""
    b, a = before["log"], after["log"]

    def d(x, y):
        return {k: (y[k] - x[k]) // attempts for k in ("bytes", "rounds")}

    zero = {"bytes": 0, "rounds": 0}
    sent_before, sent_after = before["from_dealer"], after["from_dealer"]  # what the dealer sent the owner
    ops = {}
    for name in sorted(set(a["ops"]) | set(b["ops"])):
        x = b["ops"].get(name, {"online": zero, "dealer": zero, "wall_s": 0.0})
        y = a["ops"].get(name, {"online": zero, "dealer": zero, "wall_s": 0.0})
        ops[name] = {
            "online": d(x["online"], y["online"]),
            "dealer_channel": d(x["dealer"], y["dealer"]),
            "dealer_sent": d(sent_before["ops"].get(name, zero), sent_after["ops"].get(name, zero)),
            "wall_s": round((y["wall_s"] - x["wall_s"]) / attempts, 4),
        }
    return {
        "online": d(b["online"], a["online"]),
        "dealer_channel": d(b["dealer"], a["dealer"]),
        "dealer_sent": d(sent_before["total"], sent_after["total"]),
        "ops": ops,
        "wall_s": (after["t"] - before["t"]) / attempts,
        "attempts": attempts,
    }


@command("layers")
class UseLayers(Command):
    """Both parties run only the first ``layers`` layers from now on (public; the zero-layer
    forward separates the per-layer cost from the embedding and head)."""

    layers: int

    def run(self, session: SecureSession) -> None:
        net = session.model
        session.model = Transformer(replace(session.arch, layers=self.layers), net.w, net.nl)


@contextlib.contextmanager
def _measured(log: list, profile: dict, cmd: Command):
    """Around a forward command: this party's traffic per op (for the server's side of the table);
    the first forward profiled when profiling is on (mpc.profiling)."""
    before = _snapshot()
    with profiling.profiled(profile) if isinstance(cmd, Forward) and not log else contextlib.nullcontext():
        yield
    if isinstance(cmd, Forward):
        log.append(_diff(before, _snapshot(), 1))


def owner_job(request, inputs, verbalizer, zero_layers: bool):
    start = _snapshot()
    session = SecureSession(request, verbalizer=verbalizer)
    session.range_policy = "report"  # a benchmark reports a range event (range_event) instead of stopping
    text_id = session.load_texts(replace(inputs, prompt=None))
    setup = _diff(start, _snapshot(), 1)
    forwards = []
    profile: dict = {}

    def measured_scores():
        before = _snapshot()
        with profiling.profiled(profile) if not forwards else contextlib.nullcontext():
            out = session.scores(text_id, inputs.prompt[:1])
        forwards.append(_diff(before, _snapshot(), session.forward_log[-1]["attempts"]))
        return out

    try:
        scores = measured_scores()
        if zero_layers:
            session.run(UseLayers(layers=0))
            measured_scores()
    finally:
        session.close()
    return {
        "scores": scores,
        "forwards": forwards,
        "range_events": [{"range_event": f.get("range_event", False)} for f in session.forward_log],
        "setup": setup,
        "dealer_total": accounting.log().from_dealer.bytes,
        "profile": profile.get("profile"),
    }


def server_job(spec: ModelSpec):
    describe, weights = server_description(build_model(spec))
    session = SecureSession(None, server_info=describe, weights=weights, commands=(UseLayers,))
    forwards: list = []
    profile: dict = {}
    session.instruments.append(functools.partial(_measured, forwards, profile))
    session.serve()
    return {"forwards": forwards, "profile": profile.get("profile")}


def secure_forward(
    spec: ModelSpec, arch, inputs, verbalizer, attention, fixed: bool, zero_layers: bool, timeout_s, range_samples=256
):
    cfg = approx.ApproxConfig(range_check=range_samples > 0, range_samples=max(range_samples, 1))
    request = OwnerRequest(
        labels=verbalizer.shape[0], cfg=asdict(cfg), attention=attention.as_dict(),
        expected_vocab=arch.vocab_size, fixed_weights=fixed,
    )
    return launcher.run_local(
        owner=launcher.PartyJob(owner_job, (request, inputs, verbalizer, zero_layers)),
        server=launcher.PartyJob(server_job, (spec,)),
        timeout_s=timeout_s,
    )


# --------------------------------------------------------------------------- report


def _party_comm(owner: dict, server: dict) -> dict:
    def sent(f):
        return {
            "bytes": f["online"]["bytes"] + f["dealer_channel"]["bytes"],
            "rounds": f["online"]["rounds"] + f["dealer_channel"]["rounds"],
            "online": f["online"],
            "dealer_channel": f["dealer_channel"],
        }

    return {
        "owner": sent(owner),
        "server": sent(server),
        "dealer": {"bytes": owner["dealer_sent"]["bytes"], "rounds": owner["dealer_channel"]["rounds"]},
    }


def _op_table(forward: dict) -> dict:
    """Per op type: online bytes/rounds (owner's = server's), dealer bytes sent, wall_s."""
    table = {}
    for name in OPS:
        op = forward["ops"].get(name)
        if op is None:
            table[name] = {"bytes": 0, "rounds": 0, "dealer_bytes": 0, "dealer_rounds": 0, "wall_s": 0.0}
            continue
        table[name] = {
            "bytes": op["online"]["bytes"],
            "rounds": op["online"]["rounds"],
            "dealer_bytes": op["dealer_sent"]["bytes"],
            "dealer_rounds": op["dealer_channel"]["rounds"],
            "wall_s": op["wall_s"],
        }
    keys = ("bytes", "rounds", "dealer_bytes", "dealer_rounds", "wall_s")
    counted = {k: sum(t[k] for t in table.values()) for k in keys}
    table["other"] = {
        "bytes": forward["online"]["bytes"] - counted["bytes"],
        "rounds": forward["online"]["rounds"] - counted["rounds"],
        "dealer_bytes": forward["dealer_sent"]["bytes"] - counted["dealer_bytes"],
        "dealer_rounds": forward["dealer_channel"]["rounds"] - counted["dealer_rounds"],
        "wall_s": round(forward["wall_s"] - counted["wall_s"], 4),
    }
    return table


def _links(comm: dict) -> dict:
    return _rounded(costmodel.link_times(costmodel.session_online(comm)))


def _links_with_dealer(comm: dict) -> dict:
    return _rounded(costmodel.session_link_times(comm))


def _rounded(times: dict) -> dict:
    return {name: round(s, 4) for name, s in times.items()}


def extrapolate_layers(full: dict, zero: dict, n: int, total_layers: int) -> dict:
    """Linear model in the layer count: per layer = (n-layer − 0-layer)/n."""

    def walk(a, b, fn):
        if isinstance(a, dict):
            return {k: walk(a[k], b[k], fn) for k in a}
        return fn(a, b)

    per_layer = walk(full, zero, lambda a, b: (a - b) / n)
    total = walk(zero, per_layer, lambda z, p: z + total_layers * p)
    rnd = lambda d: walk(d, d, lambda a, _: round(a, 4) if isinstance(a, float) else a)  # noqa: E731
    return {"per_layer": rnd(per_layer), "outside_layers": rnd(zero), "total": rnd(total)}


@contextlib.contextmanager
def _profiling(on: bool):
    """Every party spawned inside profiles its part (mpc.profiling reads the environment)."""
    if not on:
        yield
        return
    previous = os.environ.get(profiling.PROFILE_ENV)
    os.environ[profiling.PROFILE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[profiling.PROFILE_ENV]
        else:
            os.environ[profiling.PROFILE_ENV] = previous


def run(args) -> dict:
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(
                f"--device cuda: CUDA is not available here (torch {torch.__version__}, "
                f"cuda build: {torch.version.cuda or 'none'}); use --device cpu"
            )
        raise BenchError(
            "--device cuda: the secure forward runs on the CPU only so far (CrypTen's CUDA path "
            "is not wired); use --device cpu"
        )
    if args.mode not in ("secure", "plain"):
        raise BenchError(f"--mode must be secure or plain, not {args.mode!r}")
    if args.layers is not None and args.layers < 1:
        raise BenchError("--layers must be at least 1")
    attention = attention_config(args)
    total_layers = full_layers(ModelSpec(args.model))
    layers = args.layers if args.layers is not None and args.layers < total_layers else None
    spec = ModelSpec(args.model, layers, args.vocab, args.seed)


    arch = arch_from_config(model_config(spec))
    inputs, verbalizer = make_inputs(arch, args.seq, args.batch, args.prompt_len, args.seed)
    plain_scores, plain_s, resolved = plain_forward(spec, inputs, verbalizer, attention, args.plain_repeat)
    out = {
        "model": args.model,
        "arch": {k: getattr(arch, k) for k in ("family", "hidden", "heads", "head_dim", "intermediate", "vocab_size")},
        "layers_run": arch.layers,
        "layers_full": total_layers,
        "seq": args.seq,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "mode": args.mode,
        "attention": attention.as_dict(),
        "rfa_layers": [i for i in range(arch.layers) if resolved.uses_rfa(i)],  # as the server resolved them
        "device": args.device,
        "fixed_weights": bool(args.mode == "secure" and not args.no_fixed_weights),
        "plain_wall_s": round(plain_s, 6),  # tiny forwards take well under a millisecond
    }
    if args.model == ROBERTA_LARGE:
        out["note"] = (
            f"random RobertaForMaskedLM, RoBERTa-large shapes, vocabulary {args.vocab} instead of 50265: the "
            "embedding lookup is done once per text set, outside the measured forward"
        )
    if args.mode == "plain":
        nothing = {"bytes": 0, "rounds": 0}
        out.update(wall_s=out["plain_wall_s"], ratio=1.0, comm={p: dict(nothing) for p in ROLES})
        return out

    started = time.perf_counter()
    with _profiling(getattr(args, "profile", False)):
        results = secure_forward(
            spec, arch, inputs, verbalizer, attention, not args.no_fixed_weights, layers is not None, args.timeout,
            args.range_samples,
        )
    owner, server = results["owner"].value, results["server"].value
    secure_scores = owner["scores"]
    forward, server_forward = owner["forwards"][0], server["forwards"][0]
    comm = _party_comm(forward, server_forward)
    links = _links(comm)
    ops = _op_table(forward)
    out.update(
        wall_s=round(forward["wall_s"], 4),
        ratio=round(forward["wall_s"] / plain_s, 2),
        attempts=forward["attempts"],
        range_samples=args.range_samples,
        range_event=any(f.get("range_event", False) for f in owner["range_events"]),
        comm=comm,
        ops=ops,
        lan_s=links["LAN"],
        wan_s=links["WAN"],
        links_s=links,
        links_with_dealer_s=_links_with_dealer(comm),
        all_wires_bytes=costmodel.all_wires_bytes(comm),
        max_abs_err=float((secure_scores - plain_scores).abs().max()),
        rel_err=float((secure_scores - plain_scores).abs().max() / plain_scores.abs().max()),
        setup={
            "wall_s": round(owner["setup"]["wall_s"], 3),
            "online": owner["setup"]["online"],
            "dealer_sent": owner["setup"]["dealer_sent"],
            "note": "session set-up on the owner: weights shared (and masked once), verbalizer head, text embedding",
        },
        dealer_check={
            "counted_by_owner": owner["dealer_total"],
            "dealer_process": results["dealer"].traffic["dealer"]["bytes"],
        },
        session_totals={role: r.traffic["online"] | {"dealer": r.traffic["dealer"]} for role, r in results.items()},
        run_wall_s=round(time.perf_counter() - started, 2),
    )
    if getattr(args, "profile", False):
        out["profile"] = {
            "owner": owner["profile"],
            "server": server["profile"],
            "dealer": results["dealer"].value,
            "note": "owner, server: the first measured forward; dealer: its whole session (set-up and every "
            "forward), with seconds per request kind under 'requests' (mpc.profiling)",
        }
    if layers is not None:
        zero = owner["forwards"][1]
        zero_server = server["forwards"][1]

        def measures(f, fs):
            c = _party_comm(f, fs)
            flat = {p: {"bytes": c[p]["bytes"], "rounds": c[p]["rounds"]} for p in c}
            return {"comm": flat, "ops": _op_table(f), "links_s": _links(c), "links_with_dealer_s": _links_with_dealer(c),
                    "all_wires_bytes": costmodel.all_wires_bytes(c), "wall_s": f["wall_s"]}

        ext = extrapolate_layers(measures(forward, server_forward), measures(zero, zero_server), layers, total_layers)
        ext.update(
            method=(
                f"the same session ran the forward with {layers} and with 0 layers; per layer = "
                f"({layers}-layer - 0-layer) / {layers}; total = 0-layer + {total_layers} x per layer"
            ),
            layers=total_layers,
        )
        ext["lan_s"], ext["wan_s"] = ext["total"]["links_s"]["LAN"], ext["total"]["links_s"]["WAN"]
        out["extrapolation"] = ext
    return out


def main(args, command: str) -> int:
    """``secptune bench forward``: measure, add the report's provenance, print (and write) the JSON."""
    result = run(args)
    # which kernel every party's int64 products used (mpc.ring: auto keeps torch's on the CPU)
    result["ring_matmul"] = os.environ.get(RING_MATMUL_ENV) or "auto"
    result.update(provenance(command))
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0
