"""The secure model as a session between the data owner's and the server's processes.

Both parties run the same code (CrypTen is SPMD); each provides the inputs it owns
and a zero placeholder of the right shape for the other's.  The owner drives:
it sends a public *command* (``texts``, ``forward``, ``stop``) and both sides
then execute it.  What crosses in the clear is public by design:

* owner -> server: commands with shapes (batch size, padded length, prompt
  length, population size), the number of label words, approximation settings,
  protocol version;
* server -> owner: the public architecture (:class:`secptune.arch.Arch`) and the
  weight shapes.

Weights are shared once per session, text inputs once per text set (training
texts do not change during tuning), prompts once per forward; scores are
revealed to the owner only.  See docs/protocol.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

import mpc  # noqa: F401  (CrypTen shim)
from mpc import accounting, approx, fixed_weights, launcher
from mpc.reveal import reveal_to
from mpc.session import RANK
from secptune import __version__
from secptune.arch import Arch
from secptune.errors import SecptuneError
from rfa.config import SOFTMAX, AttentionConfig
from secptune.transformer import Batch, Nonlinear, Transformer, population_inputs, server_weights

OWNER, SERVER = RANK["owner"], RANK["server"]
WILD_SCORE = 1e4  # revealed scores beyond this mean a fixed-point wrap, not a result
MAX_ATTEMPTS = 3  # a wild forward is recomputed; three in a row is an error
# linears the model applies to the same input: one fixed-mask product, one opening
FUSED_LINEARS = (("q", "k", "v"), ("gate", "up"))


class HandshakeError(SecptuneError):
    """Owner and server cannot work together (version or model mismatch)."""


class SecureComputationError(SecptuneError):
    """The secure computation produced values that cannot be right."""


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
    request = OwnerRequest(**_broadcast(asdict(request) if request else None, OWNER))
    if callable(server_info):  # the server prepares its weights for the requested attention
        server_info = server_info(request)
    info = _broadcast(server_info, SERVER)
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
    verdict = _broadcast(problem or "ok", OWNER)
    if verdict != "ok":
        raise HandshakeError(verdict)
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
        self.is_owner = _rank() == OWNER
        request, info = _handshake(request, server_info)
        self.arch = Arch.from_dict(info["arch"])
        # public scalar the owner needs to scale its random projection (BBT); see docs/protocol.md
        self.embedding_std = info["embedding_std"]
        # the attention as the server runs it (fitted RFA: with its choice of layers)
        self.attention = AttentionConfig.from_dict(info.get("attention", request.attention))
        weights = weights() if callable(weights) else weights
        shared = {n: _share(weights[n] if weights else None, s, SERVER) for n, s in sorted(info["shapes"].items())}
        if request.fixed_weights and not request.native:  # once per session; then each linear opens only its input
            shared = fixed_weights.prepare(shared, fuse=FUSED_LINEARS)
        nonlinear = Nonlinear(
            exact=False,
            cfg=approx.ApproxConfig.from_dict(request.cfg),
            attention=self.attention,
            native=request.native,
        )
        self.model = Transformer(self.arch, shared, nonlinear)
        self.verbalizer = _share(verbalizer, (request.labels, self.arch.vocab_size), OWNER)
        self.head = self.model.label_head(self.verbalizer)
        self.texts: list[_TextSet] = []
        self.forward_log: list[dict] = []
        self.train_log: list[dict] = []
        self.optimizer = None  # baselines: Adam state, created by the first train step
        self.server_traffic: dict | None = None

    # -- commands --------------------------------------------------------------
    def _command(self, cmd: dict | None) -> dict:
        return _broadcast(cmd, OWNER)

    def load_texts(self, batch: Batch | None = None, cmd: dict | None = None) -> int:
        """Share a set of texts and embed them once; returns its id for :meth:`scores`."""
        if self.is_owner:
            B, n = batch.token_onehot.shape[:2]
            cmd = self._command(
                {"op": "texts", "B": B, "n": n, "types": batch.type_onehot is not None, "start": batch.prompt_start}
            )
        a, (B, n) = self.arch, (cmd["B"], cmd["n"])
        get = (lambda name: getattr(batch, name)) if batch is not None else (lambda name: None)  # noqa: E731
        token = _share(get("token_onehot"), (B, n, a.vocab_size), OWNER)
        types = _share(get("type_onehot"), (B, n, a.type_vocab), OWNER) if cmd["types"] else None
        shared = Batch(
            token_onehot=None,
            prompt=None,
            pred_onehot=_share(get("pred_onehot"), (B, n), OWNER),
            key_penalty=_share(get("key_penalty"), (B, n), OWNER) if a.family == "encoder" else None,
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
        from secptune import baseline

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
        entry = {"method": cmd["method"], "phases": phases, "loss": reveal_to(loss, OWNER)}
        self.train_log.append(entry)
        return entry

    def baseline_gradients(self, cmd: dict, prompt=None, labels=None, phase=None):
        """Both parties: the owner's prompt and labels shared, then the loss, trained tensors and
        gradients of ``cmd["method"]`` on text set ``cmd["texts"]`` (secptune.baseline), all shared."""
        from secptune import baseline

        if not self.model.nl.native:
            raise SecureComputationError("training baselines need a session opened with native=True")
        text = self.texts[cmd["texts"]]
        B, L = text.batch.pred_onehot.size(0), self.verbalizer.size(0)
        shared_prompt = _share(prompt, (1, cmd["P"], self.arch.hidden), OWNER)
        shared_labels = _share(labels, (B, L), OWNER)
        return baseline.loss_and_grads(
            self.model, (text.token, text.batch, text.embeds), shared_prompt, self.verbalizer, shared_labels,
            cmd["method"], phase=phase,
        )

    def scores(self, text_id: int | None = None, prompts: torch.Tensor | None = None, cmd: dict | None = None):
        """Scores [R*B, L] of R prompts [R, P, H] on text set ``text_id`` (owner gets them)."""
        started = time.perf_counter()
        before = accounting.log().as_dict()
        if self.is_owner:
            cmd = self._command({"op": "forward", "texts": text_id, "R": prompts.shape[0], "P": prompts.shape[1]})
        text = self.texts[cmd["texts"]]
        prompt = _share(prompts, (cmd["R"], cmd["P"], self.arch.hidden), OWNER)
        embeds, batch = population_inputs(text.embeds, text.batch, prompt)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            out = self.model.forward(embeds, batch, self.head)
            revealed = reveal_to(out, OWNER)
            # the owner tells the server whether to recompute (fresh triples, fresh
            # truncation randomness); the verdict is a single public bit per forward
            verdict = _broadcast("ok" if revealed is None or not _is_wild(revealed) else "retry", OWNER)
            if verdict == "ok":
                break
        after = accounting.log().as_dict()
        self.forward_log.append(
            {
                "texts": cmd["texts"],
                "sequences": out.size(0),
                "attempts": attempt,
                "wall_s": time.perf_counter() - started,
                "bytes": after["bytes"] - before["bytes"],
                "rounds": after["rounds"] - before["rounds"],
            }
        )
        if verdict != "ok":
            raise SecureComputationError(
                f"the secure forward pass produced out-of-range scores {MAX_ATTEMPTS} times in a row "
                "(fixed-point overflow); check the plain approximate mode's range warnings for this model"
            )
        return revealed

    def traffic(self) -> tuple[int, int]:
        """Bytes and rounds this process has sent in this session (all channels)."""
        log = accounting.log().as_dict()
        return log["bytes"], log["rounds"]

    def close(self) -> None:
        if self.is_owner:
            self._command({"op": "stop"})
            # the server's own byte and round counts (public): on another host they are
            # the owner's only view of the server's side of the traffic
            self.server_traffic = _broadcast(None, SERVER)

    def serve(self) -> None:
        """Server side: execute the owner's commands until it says stop."""
        while True:
            cmd = self._command(None)
            if cmd["op"] == "stop":
                _broadcast(accounting.log().as_dict(), SERVER)
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
        "server_traffic": session.server_traffic,
    }


def server_description(model):
    """The server's side of the handshake for ``model``: ``describe(request)`` prepares the
    weights for the attention the owner asked for and returns the public info;
    ``weights()`` then hands them (once) to the session that shares them."""
    prepared: dict = {}

    def describe(request: OwnerRequest) -> dict:
        arch, weights, attention = server_weights(model, AttentionConfig.from_dict(request.attention))
        prepared["weights"] = weights
        return {
            "version": __version__,
            "arch": arch.to_dict(),
            "attention": attention.as_dict(),  # as it runs: with the server's choice of RFA layers
            "shapes": {name: tuple(t.shape) for name, t in weights.items()},
            "embedding_std": float(weights["emb.word"].std()),
        }

    return describe, lambda: prepared.pop("weights")


def server_party(model_dir: str, canaries=None) -> dict:
    """The model server's process: loads and shares the weights, learns nothing."""
    from secptune.checkpoints import load_hf_model

    accounting.set_canaries(canaries)
    describe, weights = server_description(load_hf_model(model_dir))
    session = SecureSession(None, server_info=describe, weights=weights)
    session.serve()
    return {"forwards": session.forward_log, "train": session.train_log}


def run_local(
    model_dir: str,
    program: Callable,
    args: tuple,
    request: OwnerRequest,
    verbalizer: torch.Tensor,
    canaries: dict | None = None,
    timeout_s: float = 24 * 3600.0,
) -> dict[str, launcher.PartyResult]:
    """Launch owner, server and dealer on this machine and run ``program`` on the owner."""
    canaries = canaries or {}
    return launcher.run_local(
        owner=launcher.PartyJob(owner_party, (program, args, request, verbalizer, canaries.get("owner"))),
        server=launcher.PartyJob(server_party, (model_dir, canaries.get("server"))),
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


def score_batches(session, batches: list[Batch]) -> torch.Tensor:
    """Owner program for `infer`: each batch's texts with its own prompt."""
    out = []
    for batch in batches:
        text_id = session.load_texts(batch)
        out.append(session.scores(text_id, batch.prompt[:1]))
    return torch.cat(out) if out and out[0] is not None else None
