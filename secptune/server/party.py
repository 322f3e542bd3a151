"""The model server's role in a secure run: its process, and its side of the handshake.

The server holds the model's weights.  It prepares them for the attention the owner asks for
(:mod:`secptune.server.prepare`, plaintext, before any owner data arrives), secret-shares them
once, and then only mirrors the owner's commands (:meth:`secptune.secure.SecureSession.serve`):
it never receives a plaintext value of the owner's and sees no score.
"""

from __future__ import annotations

import contextlib

from mpc import accounting, transport
from rfa.config import AttentionConfig
from secptune import __version__
from secptune.baseline_session import Train
from secptune.checkpoints import load_hf_model
from secptune.privacy.secure_view import ServerViewRecorder
from secptune.secure import MAX_LABEL_WORDS, OwnerRequest, SecureSession
from secptune.server.prepare import prepare_server_model

# what the product server runs besides the session's own commands: the training baselines
SERVER_COMMANDS = (Train,)


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


def server_party(model_dir: str, canaries=None, max_labels: int = MAX_LABEL_WORDS, view=None,
                 layers: int | None = None) -> dict:
    """The model server's process: loads and shares the weights, learns nothing.

    ``view`` (:class:`secptune.privacy.secure_view.SecureViewSpec`): record what arrives here
    for the first texts (``--record-view``); ``layers``: serve only the model's first layers
    (the attack suite's own runs on public text, whose recorded part ends before layer 1)."""
    accounting.set_canaries(canaries)
    model = load_hf_model(model_dir)
    if layers is not None:
        truncate_layers(model, layers)
    recorder = None
    if view is not None:
        recorder = ServerViewRecorder(view, model.get_input_embeddings().weight.detach())
    describe, weights = server_description(model, max_labels)
    with transport.tapped(recorder.tap) if recorder else contextlib.nullcontext():
        session = SecureSession(None, server_info=describe, weights=weights, commands=SERVER_COMMANDS)
        if recorder is not None:
            recorder.session = session
            session.instruments.append(recorder.instrument)
        session.serve()
    out = {"forwards": session.forward_log, "checks": session.check_log, **session.state.get("logs", {})}
    if recorder is not None:
        recorder.write()
        out["view"] = recorder.summary()
    return out


def truncate_layers(model, layers: int) -> None:
    """Keep the first ``layers`` decoder layers of an HF causal model (in place)."""
    stack = model.model.layers
    if not 1 <= layers <= len(stack):
        raise ValueError(f"layers must be in 1..{len(stack)}, not {layers}")
    model.model.layers = type(stack)(list(stack)[:layers])
    model.config.num_hidden_layers = layers
