"""Server side: run the server's own model on public text to learn its value ranges.

MPC approximations are accurate on a stated range only.  The server knows its
model; it runs it once, exactly and in plaintext, on secptune's built-in neutral
English corpus (never the owner's data) and publishes, per layer, a coarse bound
on the activation inputs (a multiple of 8, with a safety margin).  Those bounds
become part of the public :class:`~secptune.arch.Arch`; they say no more about the
weights than the architecture does.  The same public-text pass feeds the RFA
feature-map fit (:mod:`secptune.server.feature_fit`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
from tqdm import tqdm

from mpc.approx import ChannelBounds
from rfa.config import SOFTMAX
from secptune.server.public_text import batches, public_sequences
from secptune.nonlinear import ExactNonlinear
from secptune.transformer import Transformer

log = logging.getLogger(__name__)
MARGIN = 2.0  # bound = margin x the largest |input| seen on public text, rounded up to 8
STEP = 8.0
# Prompts the calibration also runs with: the tuner's candidates have coordinates of alpha times the
# embedding table's std (BBT's projection, secptune.tune.projection; alpha 1 by default, 0.1 in the
# best H100 runs), and a prompt unlike any token drives some MLP inputs far past what text alone
# reaches (SmolLM2: ~5,000 inputs of 64 SST-2 texts past their bounds with a 10-token prompt of std
# 0.02, more than at the table's 0.136: reports/prepare/rfa_range.json).  One draw per scale.
PROMPT_LEN = 10
PROMPT_SCALES = (0.1, 1.0)
PROMPT_TEXTS = 8  # public sequences each prompt runs with (the first ones): the prompt's rows are what is new
PROMPT_SEED = 1234


def calibration_prompts(arch, weights) -> list[torch.Tensor]:
    """Random prompts [P, H] at the tuner's scales (public randomness: they mask nothing)."""
    gen = torch.Generator().manual_seed(PROMPT_SEED)
    std = float(weights["emb.word"].double().std())
    return [torch.randn(PROMPT_LEN, arch.hidden, generator=gen, dtype=torch.float64) * std * s for s in PROMPT_SCALES]


def run_public_text(arch, weights, sequences, nonlinear, capture: bool = False, prompts=(), desc: str | None = None):
    """The model on each public sequence (exactly as a forward pass would run it), then again with
    each of ``prompts`` where a tuned prompt sits; ``capture``: the returned model's ``capture``
    lists every layer's attention inputs.  ``desc``: a progress bar (batches) under that name."""
    model = Transformer(arch, weights, nonlinear)
    model.capture = [] if capture else None
    lead = 1 if arch.family == "encoder" else 0  # after CLS; causal models' BOS is the fixed prefix
    runs = [(prompt, ids) for prompt in (None, *prompts)
            for ids in batches(sequences if prompt is None else sequences[:PROMPT_TEXTS], arch)]
    with torch.no_grad():
        for prompt, ids in tqdm(runs, desc=desc, unit="batch", disable=desc is None or arch.layers < 4):
            room = arch.max_positions - len(arch.prefix_tokens) - (0 if prompt is None else prompt.size(0))
            model.hidden_of_ids(ids[:, :room], prompt, lead)
    return model


def _bound(largest: float) -> float:
    return max(STEP, math.ceil(largest * MARGIN / STEP) * STEP)


def with_activation_bounds(model, arch, weights, sequences=None, attention=None):
    """``arch`` with ``act_bounds`` (one entry per layer) and ``act_channels`` (the same per
    channel) measured on public text.

    Given ``sequences`` and an RFA ``attention`` (the server's fitted hybrid), the model
    runs with that attention and the bounds only grow: RFA's small errors shift the
    activations a little, and a bound is only right if it covers what the secure run sees.
    Each pass also runs with random prompts at the tuner's scales (:func:`calibration_prompts`).
    """
    seen: list[torch.Tensor] = []

    class Recorder(ExactNonlinear):
        def _act(self, x, name, bound):
            seen.append(x.detach().abs().reshape(-1, x.shape[-1]).amax(0).double())
            return super()._act(x, name, bound)

    sequences = public_sequences(model, arch.vocab_size) if sequences is None else sequences
    run_public_text(arch, weights, sequences, Recorder(attention=attention or SOFTMAX),
                    prompts=calibration_prompts(arch, weights), desc="activation bounds")
    channels = [
        [_bound(float(v)) for v in torch.stack(seen[i :: arch.layers]).amax(0)] for i in range(arch.layers)
    ]
    if arch.act_channels:
        channels = [
            [max(a, b) for a, b in zip(mine, old.per_channel(len(mine)))] for mine, old in zip(channels, arch.act_channels)
        ]
    bounds = tuple(max(c) for c in channels)
    if arch.family == "encoder":
        bounds += (max(bounds),)  # the LM head's dense layer: not reached by the pass above
    if arch.act_bounds:
        bounds = tuple(max(a, b) for a, b in zip(bounds, arch.act_bounds))
    return replace(arch, act_bounds=bounds, act_channels=tuple(ChannelBounds.of(c) for c in channels))
