"""The secure model as a session between the data owner's and the server's processes.

Both parties run the same code (CrypTen is SPMD); each provides the inputs it owns
and a zero placeholder of the right shape for the other's (secptune.lockstep).  The
owner drives: it sends a public, typed *command* (secptune.commands: ``texts``,
``forward``, ``stop`` here; features register theirs) and both sides then run it.
The roles' processes are :mod:`secptune.owner` and :mod:`secptune.server.party`; the
dealer's is :func:`mpc.session.run_dealer`.  What crosses in the clear is public by design:

* owner -> server: commands with shapes (batch size, padded length, prompt
  length, population size), the number of label words, approximation settings,
  protocol version;
* server -> owner: the public architecture (:class:`secptune.arch.Arch`), the
  weight shapes, its cap on label words and the seed of the one-hot check;
* both ways: the one-hot check's combinations of the verbalizer (0 when one-hot).

Weights are shared once per session, text inputs once per text set (training
texts do not change during tuning), prompts once per forward; scores are
revealed to the owner only.  See docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mpc import accounting, approx, fixed_weights
from mpc.reveal import reveal_all_to
from rfa.config import SOFTMAX, AttentionConfig
from secptune import __version__
from secptune.arch import Arch
from secptune.batch import Batch, population_inputs
from secptune.commands import Command, CommandError, command, decode
from secptune.errors import HandshakeError, RangeCheckError, SecureComputationError
from secptune.lockstep import OWNER_RANK, SERVER_RANK, broadcast_from, rank, share_input
from secptune.nonlinear import NativeNonlinear, Nonlinear
from secptune.transformer import Transformer
from secptune.verbalizer_check import checked_verbalizer

WILD_SCORE = 1e4  # revealed scores beyond this mean a fixed-point wrap, not a result
MAX_ATTEMPTS = 3  # the owner requests a wild forward again; three in a row is an error
# what the owner does when a forward's range bit is 1 (its own choice, never sent):
# "stop" raises RangeCheckError, "report" returns the scores and marks the forward_log entry
RANGE_POLICIES = ("stop", "report")
# linears the model applies to the same input: one fixed-mask product, one opening
FUSED_LINEARS = (("q", "k", "v"), ("gate", "up"))
# the server's default cap on label words per query: each label word is one more
# score of the server's model the owner reads per input (docs/protocol.md)
MAX_LABEL_WORDS = 16


@dataclass
class OwnerRequest:
    """The public part of the owner's job, sent to the server at start-up."""

    labels: int
    cfg: dict = field(default_factory=lambda: asdict(approx.ApproxConfig()))
    attention: dict = field(default_factory=SOFTMAX.as_dict)
    expected_vocab: int | None = None
    version: str = __version__
    # mask each weight once per session (mpc.fixed_weights); False: CrypTen's Beaver
    # products, which open a weight-sized masked matrix on every product
    fixed_weights: bool = True
    # the training baselines' mode (secptune.baseline): CrypTen's own non-linearities,
    # which its autograd differentiates, and Beaver products (weights may change)
    native: bool = False


def _handshake(
    request: OwnerRequest | None, server_info: dict | None, commands: tuple[str, ...] = ()
) -> tuple[OwnerRequest, dict]:
    """Both parties: the owner's request and the server's public info (``commands``: the ops the
    server runs, so the owner can refuse to send others), checked on both sides."""
    request = OwnerRequest(**broadcast_from(asdict(request) if request else None, OWNER_RANK))
    if callable(server_info):  # the server prepares its weights for the requested attention
        server_info = server_info(request)
    if server_info is not None:
        server_info = {**server_info, "commands": list(commands)}
    info = broadcast_from(server_info, SERVER_RANK)
    problem = None
    if request.version != info["version"]:
        problem = f"version mismatch: data owner runs secptune {request.version}, server {info['version']}"
    elif request.expected_vocab is not None and request.expected_vocab != info["arch"]["vocab_size"]:
        problem = (
            f"model mismatch: the owner's tokenizer has {request.expected_vocab} tokens but the "
            f"server's model has {info['arch']['vocab_size']}; both sides must use the same checkpoint"
        )
    elif not _same_attention(request.attention, info.get("attention", request.attention)):
        problem = f"the server runs attention {info['attention']}, not the requested {request.attention}"
    elif not 1 <= request.labels <= info.get("max_labels", MAX_LABEL_WORDS):
        cap = info.get("max_labels", MAX_LABEL_WORDS)
        problem = (
            f"the data owner asks for {request.labels} label words per query; this server scores "
            f"between 1 and {cap} (its max_labels setting): use at most {cap} label words"
        )
    verdict = broadcast_from(problem or "ok", OWNER_RANK)
    if verdict != "ok":
        raise HandshakeError(verdict)
    if problem:  # the server enforces its own limits whatever verdict the owner sends
        raise HandshakeError(problem)
    return request, info


def _same_attention(requested: dict, served: dict) -> bool:
    """The server may only resolve the layer choice it was asked to make (auto_kl)."""
    if requested.get("auto_kl") is None:
        return served == requested
    free = ("auto_kl", "softmax_layers")
    return {k: v for k, v in served.items() if k not in free} == {k: v for k, v in requested.items() if k not in free}


@dataclass
class TextSet:
    """A text set as both parties hold it: shared embeddings and batch fields."""

    embeds: Any  # shared [B, n, H]
    batch: Batch  # shared pred/penalty, public prompt_start
    token: Any = None  # shared one-hot [B, n, V] (fine-tuning re-embeds with changing weights)


@command("texts")
class LoadTexts(Command):
    """Share a set of B texts of n tokens (the owner's) and embed them once."""

    B: int
    n: int
    types: bool  # the model has token types (encoders): their one-hot is shared too
    start: int  # public position of the prompt in every text

    def run(self, session, batch: Batch | None = None) -> int:
        a, (B, n) = session.arch, (self.B, self.n)
        get = (lambda name: getattr(batch, name)) if batch is not None else (lambda name: None)  # noqa: E731
        token = share_input(get("token_onehot"), (B, n, a.vocab_size), OWNER_RANK)
        types = share_input(get("type_onehot"), (B, n, a.type_vocab), OWNER_RANK) if self.types else None
        shared = Batch(
            token_onehot=None,
            prompt=None,
            pred_onehot=share_input(get("pred_onehot"), (B, n), OWNER_RANK),
            key_penalty=share_input(get("key_penalty"), (B, n), OWNER_RANK) if a.family == "encoder" else None,
            prompt_start=self.start,
        )
        session.texts.append(TextSet(session.model.embed_tokens(token, types), shared, token))
        return len(session.texts) - 1


@command("forward")
class Forward(Command):
    """Score R prompts of P vectors (the owner's) on text set ``texts``; the owner gets the scores."""

    texts: int
    R: int
    P: int

    def run(self, session, prompts: torch.Tensor | None = None):
        return session.forward(self, prompts)


@command("stop")
class Stop(Command):
    """End the session: the server reports its traffic and returns from :meth:`SecureSession.serve`."""


# what every server session runs; features add theirs (SecureSession's ``commands``)
SESSION_COMMANDS = (LoadTexts, Forward)


class SecureSession:
    """A live secure model, both parties' side of it: the owner calls :meth:`load_texts`,
    :meth:`scores` and :meth:`run`; the server mirrors each command in :meth:`serve`.

    ``commands``: the server's extra commands beyond SESSION_COMMANDS (e.g. the training
    baselines' :class:`secptune.baseline_session.Train`); anything else the owner sends is
    refused with :class:`secptune.commands.CommandError`.  ``state``: per-feature state and
    logs that registered commands keep on the session (e.g. the baselines' optimiser)."""

    def __init__(
        self, request: OwnerRequest | None, verbalizer=None, server_info=None, weights=None,
        commands: tuple[type[Command], ...] = (),
    ):
        self.is_owner = rank() == OWNER_RANK
        self.accepted = SESSION_COMMANDS + tuple(commands)
        request, info = _handshake(request, server_info, tuple(c.op for c in self.accepted))
        self.server_commands = tuple(info.get("commands", ()))
        self.arch = Arch.from_dict(info["arch"])
        # before the server shares anything: the verbalizer is checked one-hot under MPC
        # (once per session; its traffic is kept in check_log), a failure stops both sides
        self.check_log: dict = {}
        with PhaseRecorder(self.check_log)("verbalizer_check"):
            verbalizer = checked_verbalizer(verbalizer, request.labels, self.arch.vocab_size)
        # public scalar the owner needs to scale its random projection (BBT); see docs/protocol.md
        self.embedding_std = info["embedding_std"]
        # the attention as the server runs it (fitted RFA: with its choice of layers)
        self.attention = AttentionConfig.from_dict(info.get("attention", request.attention))
        weights = weights() if callable(weights) else weights
        shared = {n: share_input(weights[n] if weights else None, s, SERVER_RANK) for n, s in sorted(info["shapes"].items())}
        if request.fixed_weights and not request.native:  # once per session; then each linear opens only its input
            shared = fixed_weights.prepare(shared, fuse=FUSED_LINEARS)
        cfg = approx.ApproxConfig.from_dict(request.cfg)
        nonlinear = (NativeNonlinear if request.native else Nonlinear)(
            cfg=cfg,
            # sampled range checks under MPC: one bit per forward to the owner (docs/protocol.md)
            monitor=approx.RangeMonitor(samples=cfg.range_samples if cfg.range_check else 0),
            attention=self.attention,
        )
        self.model = Transformer(self.arch, shared, nonlinear)
        self.verbalizer = verbalizer  # shared, checked one-hot (secptune.verbalizer_check)
        self.head = self.model.label_head(self.verbalizer)
        self.texts: list[TextSet] = []
        self.forward_log: list[dict] = []
        self.state: dict = {}
        # context managers entered around every command this party runs (``instrument(cmd)``):
        # benchmarks measure per command without changing the session
        self.instruments: list = []
        self.server_traffic: dict | None = None
        # owner only, never sent: what a forward whose range bit is 1 does (RANGE_POLICIES)
        self.range_policy = "stop"

    # -- commands --------------------------------------------------------------
    def run(self, cmd: Command, *private):
        """Owner: send ``cmd`` to the server and run it with the owner's ``private`` inputs."""
        if not self.is_owner:
            raise SecureComputationError("only the data owner issues commands; the server runs serve()")
        if cmd.op not in self.server_commands:  # refused here, before anything is sent
            raise CommandError(
                f"this server does not run command {cmd.op!r} (it runs: {', '.join(self.server_commands)}); "
                "start the server with a session that accepts it"
            )
        broadcast_from(cmd.to_wire(), OWNER_RANK)
        return self._execute(cmd, *private)

    def _execute(self, cmd: Command, *private):
        with contextlib.ExitStack() as stack:
            for instrument in self.instruments:
                stack.enter_context(instrument(cmd))
            return cmd.run(self, *private)

    def serve(self) -> None:
        """Server side: run the owner's commands (those this session accepts) until it says stop."""
        while True:
            message = broadcast_from(None, OWNER_RANK)
            cmd = decode(message, self.accepted + (Stop,))
            if isinstance(cmd, Stop):
                broadcast_from(accounting.log().as_dict(), SERVER_RANK)
                return
            self._execute(cmd)

    def load_texts(self, batch: Batch) -> int:
        """Owner: share a set of texts and embed them once; returns its id for :meth:`scores`."""
        B, n = batch.token_onehot.shape[:2]
        return self.run(LoadTexts(B=B, n=n, types=batch.type_onehot is not None, start=batch.prompt_start), batch)

    def scores(self, text_id: int, prompts: torch.Tensor):
        """Owner: scores [R*B, L] of R prompts [R, P, H] on text set ``text_id``.

        Every forward also reveals one bit to the owner alone: 1 iff the sampled range
        check found an input outside an approximation's range (docs/protocol.md, "Range
        checks under MPC").  Everything after that is the owner's own decision; nothing
        that depends on the bit or the scores is sent back:

        * range bit 1: ``range_policy`` "stop" raises :class:`RangeCheckError`, "report"
          returns the scores and marks the owner's ``forward_log`` entry
          (``range_event``) for the caller to handle;
        * wild scores (a two-party truncation wrapped): the owner requests the same
          forward again, an ordinary ``forward`` command (the server sees one more
          command, as for any query), at most MAX_ATTEMPTS times, then
          :class:`SecureComputationError`.
        """
        if self.range_policy not in RANGE_POLICIES:
            raise ValueError(f"range_policy must be one of {RANGE_POLICIES}, not {self.range_policy!r}")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            revealed, out_of_range = self.run(Forward(texts=text_id, R=prompts.shape[0], P=prompts.shape[1]), prompts)
            wild = _is_wild(revealed)
            self.forward_log[-1].update(attempts=attempt, range_event=out_of_range, wild=wild)
            if out_of_range or not wild:
                break  # a range violation recurs with fresh randomness: no retry
        if out_of_range and self.range_policy == "stop":
            raise RangeCheckError(
                "the secure forward pass found inputs outside an approximation's range (sampled range check; "
                f"checked: {', '.join(sorted(self.forward_log[-1]['range_checked']))}), so its scores may be "
                "wrong; run the same job with --mode plain to see which ranges are exceeded (range_warnings) and "
                "how often, then shorten or rescale the inputs or the prompt, or calibrate the model's ranges on "
                "text like yours"
            )
        if wild and not out_of_range:
            raise SecureComputationError(
                f"the secure forward pass produced out-of-range scores {MAX_ATTEMPTS} times in a row "
                "(fixed-point overflow); check the plain approximate mode's range warnings for this model"
            )
        return revealed

    def forward(self, cmd: Forward, prompts: torch.Tensor | None = None):
        """Both parties: one forward of ``cmd``; the owner gets (scores, range bit), the server None."""
        started = time.perf_counter()
        before, dealt = accounting.log().as_dict(), accounting.log().from_dealer.as_dict()
        text = self.texts[cmd.texts]
        prompt = share_input(prompts, (cmd.R, cmd.P, self.arch.hidden), OWNER_RANK)
        # every row through every layer in one pass: running each prompt once (as the plain session
        # does) cut SmolLM2's bytes (8 SST-2 texts, prompt 10: online 2.89 -> 2.57 GB per party, dealer
        # 6.35 -> 5.00 GB) but nearly doubled the online rounds (3,789 -> 7,101), a loss on the paper's WAN
        embeds, batch = population_inputs(text.embeds, text.batch, prompt, prompt_once=False)
        monitor = self.model.nl.monitor
        monitor.pending.clear()
        out = self.model.forward(embeds, batch, self.head)
        checked: dict[str, int] = {}
        for name in monitor.sampled_calls():
            checked[name] = checked.get(name, 0) + 1
        bit = monitor.secure_verdict()
        # one opening to the owner for the scores and the range bit (two reveals on record)
        revealed = reveal_all_to([out] if bit is None else [out, bit], OWNER_RANK)
        after, dealt_after = accounting.log().as_dict(), accounting.log().from_dealer.as_dict()
        self.forward_log.append(
            {
                "texts": cmd.texts,
                "sequences": out.size(0),
                "candidates": cmd.R,
                "attempts": 1,
                "range_checked": checked,
                "wall_s": time.perf_counter() - started,
                # what this party sent (to the other party and its requests to the dealer) ...
                "bytes": after["bytes"] - before["bytes"],
                "rounds": after["rounds"] - before["rounds"],
                # ... split by channel, and what the dealer sent this party for the forward
                **{
                    name: {key: now[key] - then[key] for key in ("bytes", "rounds")}
                    for name, then, now in (
                        ("online", before["online"], after["online"]),
                        ("to_dealer", before["dealer"], after["dealer"]),
                        ("from_dealer", dealt, dealt_after),
                    )
                },
            }
        )
        if revealed is None:
            return None
        return revealed[0], bool(bit is not None and float(revealed[1].item()) > 0.5)

    def traffic(self) -> tuple[int, int]:
        """Bytes and rounds this process has sent in this session (all channels)."""
        log = accounting.log().as_dict()
        return log["bytes"], log["rounds"]

    def close(self) -> None:
        """Owner: end the session; the server's own byte and round counts (public) come back —
        on another host they are the owner's only view of the server's side of the traffic."""
        if self.is_owner:
            broadcast_from(Stop().to_wire(), OWNER_RANK)
            self.server_traffic = broadcast_from(None, SERVER_RANK)


class PhaseRecorder:
    """``with recorder(name):`` adds the online traffic this process sent (to the other
    computing party), its requests to the dealer and the time spent to ``phases[name]``."""

    def __init__(self, phases: dict):
        self.phases = phases

    def __call__(self, name: str):
        @contextlib.contextmanager
        def record():
            before, started = accounting.log().as_dict(), time.perf_counter()
            yield
            after = accounting.log().as_dict()
            slot = self.phases.setdefault(
                name, {"bytes": 0, "rounds": 0, "dealer_bytes": 0, "dealer_rounds": 0, "wall_s": 0.0}
            )
            for key, channel in (("", "online"), ("dealer_", "dealer")):
                slot[key + "bytes"] += after[channel]["bytes"] - before[channel]["bytes"]
                slot[key + "rounds"] += after[channel]["rounds"] - before[channel]["rounds"]
            slot["wall_s"] += time.perf_counter() - started

        return record()


def _is_wild(scores: torch.Tensor) -> bool:
    """Scores no honest computation produces: a two-party truncation wrapped (an error
    of ~2^32, probability ~|v| 2^-32 per product) or a value overflowed the ring."""
    return bool(not torch.isfinite(scores).all() or scores.abs().max() > WILD_SCORE)


