"""The server's preparation of its model, as one value: :class:`ServerModel`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from rfa.config import SOFTMAX, AttentionConfig
from rfa.random_features import server_feature_matrices
from secptune.arch import Arch, arch_from_config, extract_weights
from secptune.server.calibrate import with_activation_bounds
from secptune.server.feature_fit import fitted_attention
from secptune.nonlinear import ExactNonlinear
from secptune.transformer import Transformer


@dataclass(frozen=True)
class ServerModel:
    """What the server runs: ``arch`` (public, with its activation bounds), ``weights``
    (canonical, plaintext: shared by the secure session), ``attention`` as it will run
    (fitted RFA resolved to the server's layers) and ``choice``: how those layers were
    chosen (per-layer damage, budgets tried), or None when no budget asked for a choice."""

    arch: Arch
    weights: dict
    attention: AttentionConfig
    choice: dict | None = None
    timings: dict = field(default_factory=dict, compare=False)  # seconds per preparation stage


def prepare_server_model(model, attention: AttentionConfig = SOFTMAX) -> ServerModel:
    """Plaintext, on the server: the architecture and canonical weights of an HF model,
    plus the keys/values of the fixed prefix tokens (causal models) and, for RFA, the
    feature matrices ``l{i}.rfa`` (the server's, fixed per model).

    The prefix (BOS) never depends on the owner's input, so its per-layer keys and
    values are computed here once, exactly, and shared like weights.  This also
    keeps the attention-sink token — whose hidden state reaches mean squares near
    1e6 in SmolLM2 — out of the fixed-point computation.
    """
    timings: dict = {}
    started = time.perf_counter()
    arch = arch_from_config(model.config)
    weights = extract_weights(model, arch)
    if arch.family == "causal" and arch.prefix_tokens:
        ids = torch.tensor(arch.prefix_tokens)
        embeds = weights["emb.word"][ids].unsqueeze(0)
        capture: dict = {}
        Transformer(arch, weights, ExactNonlinear()).causal(embeds, capture)
        weights.update(capture)
    arch = with_activation_bounds(model, arch, weights)
    timings["weights_and_bounds"] = time.perf_counter() - started
    choice = None
    if attention.kind == "rfa" and attention.features == "fitted":
        arch, maps, attention, choice = fitted_attention(model, arch, weights, attention, timings=timings)
        weights.update(maps)
    else:
        weights.update(server_feature_matrices(attention, arch.layers, arch.head_dim, arch.kv_heads))
    return ServerModel(arch, weights, attention, choice, timings)
