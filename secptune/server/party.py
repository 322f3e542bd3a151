"""The model server's role in a secure run: its process, and its side of the handshake.

The server holds the model's weights.  It prepares them for the attention the owner asks for
(:mod:`secptune.server.prepare`, plaintext, before any owner data arrives), secret-shares them
once, and then only mirrors the owner's commands (:meth:`secptune.secure.SecureSession.serve`):
it never receives a plaintext value of the owner's and sees no score.
"""

from __future__ import annotations

from mpc import accounting
from rfa.config import AttentionConfig
from secptune import __version__
from secptune.baseline_session import Train
from secptune.checkpoints import load_hf_model
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


def server_party(model_dir: str, canaries=None, max_labels: int = MAX_LABEL_WORDS) -> dict:
    """The model server's process: loads and shares the weights, learns nothing."""
    accounting.set_canaries(canaries)
    describe, weights = server_description(load_hf_model(model_dir), max_labels)
    session = SecureSession(None, server_info=describe, weights=weights, commands=SERVER_COMMANDS)
    session.serve()
    return {"forwards": session.forward_log, "checks": session.check_log, **session.state.get("logs", {})}
