"""The secure forward pass as run by the data owner's and the model server's processes.

Both parties run the same program (CrypTen is SPMD); each provides the inputs it
owns and a zero placeholder of the right shape for the other's.  What crosses
between them before the computation is public by design:

* owner -> server: batch shapes, the number of label words, the approximation
  settings and protocol version;
* server -> owner: the public architecture (:class:`secptune.arch.Arch`) and the
  weight shapes.

Weights are shared by the server, inputs by the owner, and the label-word scores
are revealed to the owner only.  Text-token embeddings are a secure one-hot
product with the server's secret embedding table; label-word output rows are
selected the same way, so the server learns neither the text nor the label words.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

import mpc  # noqa: F401  (CrypTen shim)
from mpc import accounting, approx, launcher
from mpc.reveal import reveal_to
from mpc.session import RANK
from secptune import __version__
from secptune.arch import Arch, arch_from_config, extract_weights
from secptune.errors import SecptuneError
from secptune.transformer import Batch, Nonlinear, Transformer

OWNER, SERVER = RANK["owner"], RANK["server"]
WILD_SCORE = 1e4  # revealed scores beyond this mean a fixed-point wrap, not a result


class HandshakeError(SecptuneError):
    """Owner and server cannot work together (version or model mismatch)."""


class SecureComputationError(SecptuneError):
    """The secure computation produced values that cannot be right."""


@dataclass
class OwnerRequest:
    """The public part of the owner's job, sent to the server at start-up."""

    batches: list[tuple[int, int]]  # (batch size, padded length) per forward pass
    labels: int
    with_types: bool
    cfg: dict = field(default_factory=lambda: asdict(approx.ApproxConfig()))
    expected_vocab: int | None = None
    version: str = __version__


@dataclass
class OwnerPrivate:
    """The owner's secrets: one Batch per forward pass and the label-word one-hots."""

    batches: list[Batch]
    verbalizer_onehot: torch.Tensor


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
    info = _broadcast(server_info, SERVER)
    problem = None
    if request.version != info["version"]:
        problem = f"version mismatch: data owner runs secptune {request.version}, server {info['version']}"
    elif request.expected_vocab is not None and request.expected_vocab != info["arch"]["vocab_size"]:
        problem = (
            f"model mismatch: the owner's tokenizer has {request.expected_vocab} tokens but the "
            f"server's model has {info['arch']['vocab_size']}; both sides must use the same checkpoint family"
        )
    verdict = _broadcast(problem or "ok", OWNER)
    if verdict != "ok":
        raise HandshakeError(verdict)
    return request, info


def _secure_weights(shapes: dict, weights: dict | None) -> dict:
    return {name: _share(weights[name] if weights else None, shape, SERVER) for name, shape in sorted(shapes.items())}


def _secure_batch(arch: Arch, request: OwnerRequest, index: int, batch: Batch | None) -> Batch:
    B, n = request.batches[index]
    get = (lambda name: getattr(batch, name)) if batch else (lambda name: None)  # noqa: E731
    return Batch(
        token_onehot=_share(get("token_onehot"), (B, n, arch.vocab_size), OWNER),
        prompt=_share(get("prompt"), (B, n, arch.hidden), OWNER),
        pred_onehot=_share(get("pred_onehot"), (B, n), OWNER),
        key_penalty=_share(get("key_penalty"), (B, n), OWNER) if arch.family == "encoder" else None,
        type_onehot=_share(get("type_onehot"), (B, n, arch.type_vocab), OWNER) if request.with_types else None,
    )


def _run(request, private: OwnerPrivate | None, server_info, weights) -> dict:
    request, info = _handshake(request, server_info)
    arch = Arch.from_dict(info["arch"])
    cfg = approx.ApproxConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in request.cfg.items()})
    model = Transformer(arch, _secure_weights(info["shapes"], weights), Nonlinear(exact=False, cfg=cfg))
    verbalizer = _share(
        private.verbalizer_onehot if private else None, (request.labels, arch.vocab_size), OWNER
    )
    head = model.label_head(verbalizer)
    scores, times = [], []
    for i in range(len(request.batches)):
        started = time.perf_counter()
        batch = _secure_batch(arch, request, i, private.batches[i] if private else None)
        out = model.forward(model.embed_tokens(batch.token_onehot, batch.type_onehot), batch, head)
        revealed = reveal_to(out, OWNER)
        times.append(time.perf_counter() - started)
        if revealed is not None:
            scores.append(revealed)
    result = {"forward_s": times}
    if private is not None:
        result["scores"] = torch.cat(scores)
        _check_wild(result["scores"])
    return result


def _check_wild(scores: torch.Tensor) -> None:
    if not torch.isfinite(scores).all() or scores.abs().max() > WILD_SCORE:
        raise SecureComputationError(
            "the secure forward pass produced out-of-range scores (a fixed-point overflow or a "
            "rare truncation wrap); rerun, and if it repeats check the plain approximate mode's "
            "range warnings for this model"
        )


def owner_party(request: OwnerRequest, private: OwnerPrivate, canaries: torch.Tensor | None = None) -> dict:
    """The data owner's process: shares inputs, receives the scores."""
    accounting.set_canaries(canaries)
    return _run(request, private, None, None)


def server_party(model_dir: str, canaries: torch.Tensor | None = None) -> dict:
    """The model server's process: loads and shares the weights, learns nothing."""
    from secptune.checkpoints import load_hf_model

    accounting.set_canaries(canaries)
    model = load_hf_model(model_dir)
    arch = arch_from_config(model.config)
    weights = extract_weights(model, arch)
    del model
    info = {
        "version": __version__,
        "arch": arch.to_dict(),
        "shapes": {name: tuple(t.shape) for name, t in weights.items()},
    }
    return _run(None, None, info, weights)


def run_local(
    model_dir: str,
    request: OwnerRequest,
    private: OwnerPrivate,
    canaries: dict | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, launcher.PartyResult]:
    """Launch owner, server and dealer locally and run the secure forward passes."""
    canaries = canaries or {}
    return launcher.run_local(
        owner=launcher.PartyJob(owner_party, (request, private, canaries.get("owner"))),
        server=launcher.PartyJob(server_party, (model_dir, canaries.get("server"))),
        timeout_s=timeout_s,
    )
