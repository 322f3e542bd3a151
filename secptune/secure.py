"""The secure model as a session between the data owner's and the server's processes.

Both parties run the same code (CrypTen is SPMD); each provides the inputs it owns
and a zero placeholder of the right shape for the other's.  The owner drives:
it sends a public *command* (``texts``, ``forward``, ``stop``) and both sides
then execute it.  What crosses in the clear is public by design:

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

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from mpc import accounting, approx, fixed_weights, launcher
from mpc.opened import Opened
from mpc.reveal import reveal_all_to, reveal_to
from mpc.roles import RANK
from mpc.tensorops import PRECISION_BITS, open_shares
from rfa.config import SOFTMAX, AttentionConfig
from secptune import __version__, baseline
from secptune.arch import Arch
from secptune.batch import Batch, population_inputs
from secptune.checkpoints import load_hf_model
from secptune.errors import SecptuneError
from secptune.nonlinear import NativeNonlinear, Nonlinear
from secptune.server.prepare import prepare_server_model
from secptune.transformer import Transformer

OWNER_RANK, SERVER_RANK = RANK["owner"], RANK["server"]  # CrypTen process ranks (mpc.roles)
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
VERBALIZER_CHALLENGES = 4  # independent random combinations in the one-hot check


class HandshakeError(SecptuneError):
    """Owner and server cannot work together (version or model mismatch)."""


class SecureComputationError(SecptuneError):
    """The secure computation produced values that cannot be right."""


class VerbalizerError(SecureComputationError):
    """The owner's verbalizer failed the one-hot check: the server scores nothing with it."""


class RangeCheckError(SecureComputationError):
    """A secure forward's sampled range check found an input outside an approximation's range."""


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


def _rank() -> int:
    import crypten.communicator as comm

    return comm.get().get_rank()


def _share(value, shape, src: int):
    """Secret-share ``value`` from party ``src``; other parties pass only the shape."""
    import crypten

    if _rank() == src:
        return crypten.cryptensor(value.double(), src=src)
    return crypten.cryptensor(torch.zeros(shape, dtype=torch.float64), src=src)


def _broadcast(obj, src: int):
    import crypten.communicator as comm

    return comm.get().broadcast_obj(obj if _rank() == src else None, src)


def _handshake(request: OwnerRequest | None, server_info: dict | None) -> tuple[OwnerRequest, dict]:
    request = OwnerRequest(**_broadcast(asdict(request) if request else None, OWNER_RANK))
    if callable(server_info):  # the server prepares its weights for the requested attention
        server_info = server_info(request)
    info = _broadcast(server_info, SERVER_RANK)
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
    verdict = _broadcast(problem or "ok", OWNER_RANK)
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
class _TextSet:
    embeds: Any  # shared [B, n, H]
    batch: Batch  # shared pred/penalty, public prompt_start
    token: Any = None  # shared one-hot [B, n, V] (fine-tuning re-embeds with changing weights)


class SecureSession:
    """A live secure model; the owner calls its methods, the server mirrors them in :meth:`serve`."""

    def __init__(self, request: OwnerRequest | None, verbalizer=None, server_info=None, weights=None):
        self.is_owner = _rank() == OWNER_RANK
        request, info = _handshake(request, server_info)
        self.arch = Arch.from_dict(info["arch"])
        # before the server shares anything: the verbalizer is checked one-hot under MPC
        # (once per session; its traffic is kept in check_log), a failure stops both sides
        self.check_log: dict = {}
        with _PhaseRecorder(self.check_log)("verbalizer_check"):
            verbalizer = _checked_verbalizer(verbalizer, request.labels, self.arch.vocab_size)
        # public scalar the owner needs to scale its random projection (BBT); see docs/protocol.md
        self.embedding_std = info["embedding_std"]
        # the attention as the server runs it (fitted RFA: with its choice of layers)
        self.attention = AttentionConfig.from_dict(info.get("attention", request.attention))
        weights = weights() if callable(weights) else weights
        shared = {n: _share(weights[n] if weights else None, s, SERVER_RANK) for n, s in sorted(info["shapes"].items())}
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
        self.verbalizer = verbalizer  # shared, checked one-hot (_checked_verbalizer)
        self.head = self.model.label_head(self.verbalizer)
        self.texts: list[_TextSet] = []
        self.forward_log: list[dict] = []
        self.train_log: list[dict] = []
        self.optimizer = None  # baselines: Adam state, created by the first train step
        self.server_traffic: dict | None = None
        # owner only, never sent: what a forward whose range bit is 1 does (RANGE_POLICIES)
        self.range_policy = "stop"

    # -- commands --------------------------------------------------------------
    def _command(self, cmd: dict | None) -> dict:
        return _broadcast(cmd, OWNER_RANK)

    def load_texts(self, batch: Batch | None = None, cmd: dict | None = None) -> int:
        """Share a set of texts and embed them once; returns its id for :meth:`scores`."""
        if self.is_owner:
            B, n = batch.token_onehot.shape[:2]
            cmd = self._command(
                {"op": "texts", "B": B, "n": n, "types": batch.type_onehot is not None, "start": batch.prompt_start}
            )
        a, (B, n) = self.arch, (cmd["B"], cmd["n"])
        get = (lambda name: getattr(batch, name)) if batch is not None else (lambda name: None)  # noqa: E731
        token = _share(get("token_onehot"), (B, n, a.vocab_size), OWNER_RANK)
        types = _share(get("type_onehot"), (B, n, a.type_vocab), OWNER_RANK) if cmd["types"] else None
        shared = Batch(
            token_onehot=None,
            prompt=None,
            pred_onehot=_share(get("pred_onehot"), (B, n), OWNER_RANK),
            key_penalty=_share(get("key_penalty"), (B, n), OWNER_RANK) if a.family == "encoder" else None,
            prompt_start=cmd["start"],
        )
        self.texts.append(_TextSet(self.model.embed_tokens(token, types), shared, token))
        return len(self.texts) - 1

    def train(
        self, text_id=None, prompt=None, labels=None, method: str = "", lr: float = 1e-3, cmd=None, step: bool = True
    ) -> dict:
        """One step of a training baseline (secptune.baseline) on text set ``text_id`` with
        ``prompt`` [1, P, H] and one-hot ``labels`` [B, L] (owner's); needs a ``native``
        session.  ``step=False`` stops after the gradients (benchmarks: the Adam step's cost depends
        only on the trained tensors' sizes).  Returns per-phase traffic and time, and (owner) the
        revealed loss."""
        if self.is_owner:
            cmd = self._command(
                {"op": "train", "texts": text_id, "P": prompt.shape[1], "method": method, "lr": lr, "step": step}
            )
        phases: dict = {}
        recorder = _PhaseRecorder(phases)
        loss, params, grads = self.baseline_gradients(cmd, prompt, labels, phase=recorder)
        if cmd.get("step", True):
            if self.optimizer is None:
                self.optimizer = baseline.Adam(lr=cmd["lr"])
            self.optimizer.lr = cmd["lr"]  # a schedule may change it between steps; the moments carry over
            with recorder("step"):
                updated = self.optimizer.step(params, grads)
            if cmd["method"] == "sft":
                self.model.w.update(updated)
        entry = {"method": cmd["method"], "phases": phases, "loss": reveal_to(loss, OWNER_RANK)}
        self.train_log.append(entry)
        return entry

    def baseline_gradients(self, cmd: dict, prompt=None, labels=None, phase=None):
        """Both parties: the owner's prompt and labels shared, then the loss, trained tensors and
        gradients of ``cmd["method"]`` on text set ``cmd["texts"]`` (secptune.baseline), all shared."""
        if not self.model.nl.trainable:
            raise SecureComputationError("training baselines need a session opened with native=True")
        text = self.texts[cmd["texts"]]
        B, L = text.batch.pred_onehot.size(0), self.verbalizer.size(0)
        shared_prompt = _share(prompt, (1, cmd["P"], self.arch.hidden), OWNER_RANK)
        shared_labels = _share(labels, (B, L), OWNER_RANK)
        return baseline.loss_and_grads(
            self.model, (text.token, text.batch, text.embeds), shared_prompt, self.verbalizer, shared_labels,
            cmd["method"], phase=phase,
        )

    def scores(self, text_id: int | None = None, prompts: torch.Tensor | None = None, cmd: dict | None = None):
        """Scores [R*B, L] of R prompts [R, P, H] on text set ``text_id`` (owner gets them).

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
        if not self.is_owner:
            self._forward(cmd)
            return None
        if self.range_policy not in RANGE_POLICIES:
            raise ValueError(f"range_policy must be one of {RANGE_POLICIES}, not {self.range_policy!r}")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            cmd = self._command({"op": "forward", "texts": text_id, "R": prompts.shape[0], "P": prompts.shape[1]})
            revealed, out_of_range = self._forward(cmd, prompts)
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

    def _forward(self, cmd: dict, prompts: torch.Tensor | None = None):
        """Both parties: one forward of ``cmd``; the owner gets (scores, range bit), the server None."""
        started = time.perf_counter()
        before = accounting.log().as_dict()
        text = self.texts[cmd["texts"]]
        prompt = _share(prompts, (cmd["R"], cmd["P"], self.arch.hidden), OWNER_RANK)
        embeds, batch = population_inputs(text.embeds, text.batch, prompt)
        monitor = self.model.nl.monitor
        monitor.pending.clear()
        out = self.model.forward(embeds, batch, self.head)
        checked: dict[str, int] = {}
        for name in monitor.sampled_calls():
            checked[name] = checked.get(name, 0) + 1
        bit = monitor.secure_verdict()
        # one opening to the owner for the scores and the range bit (two reveals on record)
        revealed = reveal_all_to([out] if bit is None else [out, bit], OWNER_RANK)
        after = accounting.log().as_dict()
        self.forward_log.append(
            {
                "texts": cmd["texts"],
                "sequences": out.size(0),
                "attempts": 1,
                "range_checked": checked,
                "wall_s": time.perf_counter() - started,
                "bytes": after["bytes"] - before["bytes"],
                "rounds": after["rounds"] - before["rounds"],
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
        if self.is_owner:
            self._command({"op": "stop"})
            # the server's own byte and round counts (public): on another host they are
            # the owner's only view of the server's side of the traffic
            self.server_traffic = _broadcast(None, SERVER_RANK)

    def serve(self) -> None:
        """Server side: execute the owner's commands until it says stop."""
        while True:
            cmd = self._command(None)
            if cmd["op"] == "stop":
                _broadcast(accounting.log().as_dict(), SERVER_RANK)
                return
            if cmd["op"] == "texts":
                self.load_texts(cmd=cmd)
            elif cmd["op"] == "forward":
                self.scores(cmd=cmd)
            elif cmd["op"] == "train":
                self.train(cmd=cmd)
            else:
                raise SecureComputationError(f"unknown command from the data owner: {cmd['op']!r}")


class _PhaseRecorder:
    """``with recorder(name):`` adds the online traffic this process sent (to the other
    computing party), its requests to the dealer and the time spent to ``phases[name]``."""

    def __init__(self, phases: dict):
        self.phases = phases

    def __call__(self, name: str):
        import contextlib

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


def _checked_verbalizer(verbalizer, labels: int, vocab: int):
    """The owner's verbalizer [labels, vocab], secret-shared and checked one-hot under MPC.

    Why: the label head is ``verbalizer @ W_out`` and the owner reads its products with
    the hidden state.  With free rows (several 1s, fractions, random projections) one
    query would reveal arbitrary linear functions of the full logit vector instead of
    the scores of ``labels`` words; the server is the party this protects.

    How (both parties, in lockstep; once per session):

    1. The owner shares its entries as *integers* B (scale 1, not fixed point) and the
       session uses 2^16·B — a local multiple, the same encoding as a shared 0/1 at 16-bit
       fixed point — so every entry used is a whole number by construction.  The check
       cannot run on fixed-point encodings Y: any integer polynomial that vanishes at
       Y = 0 and Y = 2^16 has its linear coefficient divisible by 2^16, so it also
       vanishes at Y = 2^48·k (the value 2^32·k) and no product check can refuse those.
    2. B is opened once under a fresh Beaver mask (:class:`mpc.opened.Opened`: one
       exchange of 8 bytes per entry, uniform), which binds the owner's shares; only then
       does the server draw a 32-byte seed from OS randomness and send it, and both
       expand it with SHAKE-256 into public coefficients r_c (per entry) and q_c (per row).
       The owner cannot pick its verbalizer after seeing them.  The server choosing the
       coins is safe: it is the verifier, and an honest owner passes for every choice.
    3. Shares of B² come from the same opening (the dealer's shares of A², no traffic),
       so both hold exact ring shares of z = B² − B (per entry) and s = Σ_row B − 1 (per
       row), and open t_c = Σ r_c·z + Σ q_c·s for c = 1..4 (one exchange of 32 bytes).
    4. Accepted iff every t_c = 0.  Otherwise both sides raise :class:`VerbalizerError`
       and the session ends before the server shares any weight.

    Soundness (Z_2^64 has zero divisors): the used entry 2^16·B is 0 or 1 exactly when
    B mod 2^48 is 0 or 1, and a row of the used matrix sums to 1 exactly when its B sum
    is 1 mod 2^48.  If either fails, some z or s is non-zero mod 2^48 (B and B − 1 are
    coprime), i.e. has at most 47 factors of two, so each t_c is 0 with probability at
    most 2^-17 over the coins, independently: at most 2^-68 for the four.

    What it reveals — opened to both parties, so each decides on its own and neither has
    to trust the other's verdict, in one exchange: t is a function of the owner's
    verbalizer and the public coins only.  For a one-hot verbalizer every t_c is 0, a
    fixed outcome, so the opening tells either party nothing but "one-hot".  The owner
    learns nothing it did not know (it can compute t itself).  For a rejected verbalizer
    the server sees four random combinations of the owner's deviations from one-hot —
    about the rejected matrix, never about the server's model.  Threat model: the owner
    follows the protocol but chooses its input freely; an owner that also alters its
    shares in later steps is out of scope (additive shares carry no MACs).
    """
    import hashlib
    import secrets

    import numpy as np
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    shape = (labels, vocab)
    owner = _rank() == OWNER_RANK
    if owner and tuple(verbalizer.shape) != shape:
        raise VerbalizerError(f"the verbalizer has shape {tuple(verbalizer.shape)}; the request says {shape}")
    ints = _verbalizer_integers(verbalizer) if owner else torch.zeros(shape, dtype=torch.long)
    bits = ArithmeticSharedTensor(ints, precision=0, src=OWNER_RANK).share
    # Opened needs the 16-bit label; it works on the ring shares, and only the exact
    # (untruncated) square shares are used
    opened = Opened(MPCTensor.from_shares(bits, precision=PRECISION_BITS))
    seed = _broadcast(secrets.token_bytes(32) if not owner else None, SERVER_RANK)
    count = VERBALIZER_CHALLENGES * (labels * vocab + labels)
    coins = np.frombuffer(hashlib.shake_256(seed).digest(8 * count), dtype=np.int64).copy()
    coins = torch.from_numpy(coins).to(bits.device).view(VERBALIZER_CHALLENGES, -1)
    r, q = coins[:, : labels * vocab].view(-1, labels, vocab), coins[:, labels * vocab :]
    z = opened._square_shares(last=True) - bits  # shares of B² − B, exact in the ring
    s = bits.sum(-1)  # shares of the row sums; the owner's share carries the − 1
    if owner:
        s = s - 1
    t = (r * z).sum((1, 2)) + (q * s).sum(1)  # int64 arithmetic wraps: exact mod 2^64
    (t,) = open_shares([t])
    if bool((t == 0).all()):
        return MPCTensor.from_shares(bits * 2**PRECISION_BITS, precision=PRECISION_BITS)
    if owner:
        raise VerbalizerError(
            "the server refused the verbalizer: each row must be one-hot (one 1, zeros elsewhere); "
            + _verbalizer_problem(verbalizer)
        )
    raise VerbalizerError(
        "refusing to continue: the data owner's verbalizer failed the one-hot check "
        "(a row is not a single 1 among zeros); nothing was scored"
    )


def _verbalizer_integers(verbalizer: torch.Tensor) -> torch.Tensor:
    """The owner's integer entries B.  An entry that is not a whole number cannot be shared
    at scale 1; it is shared as 2 — not a bit, so the check refuses it like any other."""
    v = verbalizer.double().clamp(-(2.0**62), 2.0**62)
    whole = torch.round(v)
    return torch.where(whole == v, whole, torch.full_like(v, 2.0)).long()


def _verbalizer_problem(verbalizer: torch.Tensor) -> str:
    """Owner side, plaintext: which row is not one-hot (for the owner's own error message)."""
    v = verbalizer.double()
    for i, row in enumerate(v):
        if not bool(((row == 0) | (row == 1)).all()) or float(row.sum()) != 1.0:
            shown = row[row != 0][:4].tolist()
            return f"row {i} is not (its non-zero entries start {shown}, {int((row != 0).sum())} of them)"
    return "every row looks one-hot here, but the shared entries failed the check"


def owner_party(
    program: Callable, args: tuple, request: OwnerRequest, verbalizer: torch.Tensor, canaries=None
):
    """The data owner's process: runs ``program(session, *args)`` against the secure model."""
    accounting.set_canaries(canaries)
    session = SecureSession(request, verbalizer=verbalizer)
    try:
        result = program(session, *args)
    finally:
        session.close()
    return {
        "result": result, "forwards": session.forward_log, "train": session.train_log,
        "server_traffic": session.server_traffic, "checks": session.check_log,
    }


def server_description(model, max_labels: int = MAX_LABEL_WORDS):
    """The server's side of the handshake for ``model``: ``describe(request)`` prepares the
    weights for the attention the owner asked for and returns the public info;
    ``weights()`` then hands them (once) to the session that shares them.

    ``max_labels`` is the server's cap on label words per query: a request for more is
    refused in the handshake (each label word is one more score the owner reads)."""
    prepared: dict = {}

    def describe(request: OwnerRequest) -> dict:
        server = prepare_server_model(model, AttentionConfig.from_dict(request.attention))
        arch, weights, attention = server.arch, server.weights, server.attention
        prepared["weights"] = weights
        return {
            "version": __version__,
            "arch": arch.to_dict(),
            "attention": attention.as_dict(),  # as it runs: with the server's choice of RFA layers
            "shapes": {name: tuple(t.shape) for name, t in weights.items()},
            "embedding_std": float(weights["emb.word"].std()),
            "max_labels": int(max_labels),
        }

    return describe, lambda: prepared.pop("weights")


def server_party(model_dir: str, canaries=None, max_labels: int = MAX_LABEL_WORDS) -> dict:
    """The model server's process: loads and shares the weights, learns nothing."""
    accounting.set_canaries(canaries)
    describe, weights = server_description(load_hf_model(model_dir), max_labels)
    session = SecureSession(None, server_info=describe, weights=weights)
    session.serve()
    return {"forwards": session.forward_log, "train": session.train_log, "checks": session.check_log}


def run_local(
    model_dir: str,
    program: Callable,
    args: tuple,
    request: OwnerRequest,
    verbalizer: torch.Tensor,
    canaries: dict | None = None,
    timeout_s: float = 24 * 3600.0,
    max_labels: int = MAX_LABEL_WORDS,
    launch: Callable | None = None,
) -> dict[str, launcher.PartyResult]:
    """Launch owner, server and dealer on this machine and run ``program`` on the owner
    (``max_labels``: the server's cap on label words per query; ``launch``: runs the two
    jobs as :func:`mpc.launcher.run_local` does, the default; tests pass a
    :class:`mpc.launcher.LocalCluster`'s ``run``)."""
    canaries = canaries or {}
    return (launch or launcher.run_local)(
        owner=launcher.PartyJob(owner_party, (program, args, request, verbalizer, canaries.get("owner"))),
        server=launcher.PartyJob(server_party, (model_dir, canaries.get("server"), max_labels)),
        timeout_s=timeout_s,
    )


def run_remote(
    program: Callable,
    args: tuple,
    request: OwnerRequest,
    verbalizer: torch.Tensor,
    network,
    timeout_s: float | None = None,
) -> dict[str, launcher.PartyResult]:
    """Run ``program`` as the data owner against a server and dealer on other hosts.

    ``network`` (:class:`mpc.net.Network`, role ``owner``) says where they are; they
    run ``secptune party --role server|dealer``.  Returns the owner's PartyResult and,
    under ``server``, the traffic the server reported at the end of the session.
    """
    owner = launcher.run_party(
        "owner", network, launcher.PartyJob(owner_party, (program, args, request, verbalizer, None)), timeout_s
    )
    server = launcher.PartyResult(role="server", traffic=owner.value.get("server_traffic") or {})
    return {"owner": owner, "server": server}


def range_events(forward_log: list[dict]) -> dict:
    """Owner side: the range events of a session's forwards (``forward_log`` entries).

    ``out_of_range``: forwards whose range bit was 1; ``calls``: indices of the
    :meth:`SecureSession.scores` calls they belong to (e.g. `infer`'s batches);
    ``wild_retries``: forwards requested again because their scores were wild."""
    out = {"forwards": len(forward_log), "out_of_range": 0, "calls": [], "wild_retries": 0}
    call = 0
    for entry in forward_log:
        if entry.get("range_event"):
            out["out_of_range"] += 1
            out["calls"].append(call)
        elif entry.get("wild") and entry.get("attempts", 1) < MAX_ATTEMPTS:
            out["wild_retries"] += 1
            continue  # the same call goes on with another forward
        call += 1
    return out


def score_batches(session, batches: list[Batch], range_policy: str | None = None) -> torch.Tensor:
    """Owner program for `infer`: each batch's texts with its own prompt (``range_policy``:
    the secure session's, see :meth:`SecureSession.scores`; None keeps its default)."""
    if range_policy is not None and hasattr(session, "range_policy"):
        session.range_policy = range_policy
    out = []
    for batch in batches:
        text_id = session.load_texts(batch)
        out.append(session.scores(text_id, batch.prompt[:1]))
    return torch.cat(out) if out and out[0] is not None else None
