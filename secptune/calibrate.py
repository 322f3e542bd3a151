"""Server side: run the server's own model on public text to learn its value ranges.

MPC approximations are accurate on a stated range only.  The server knows its
model; it runs it once, exactly and in plaintext, on secptune's built-in neutral
English corpus (never the owner's data) and publishes, per layer, a coarse bound
on the activation inputs (a multiple of 8, with a safety margin).  Those bounds
become part of the public :class:`~secptune.arch.Arch`; they say no more about the
weights than the architecture does.  The same public-text pass feeds the RFA
feature-map fit (:mod:`secptune.feature_fit`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch

log = logging.getLogger(__name__)
MARGIN = 2.0  # bound = margin x the largest |input| seen on public text, rounded up to 8
STEP = 8.0
BATCH = 16  # public sequences of one length run together


def public_sequences(model, vocab_size: int, count: int = 8, lines_each: int = 4) -> list[list[int]]:
    """``count`` sequences of a few corpus lines each, in the model's own tokens."""
    from secptune.tiny_corpus import TEXT

    lines = [line.strip() for line in TEXT.splitlines() if line.strip()]
    chunks = [" ".join(lines[i : i + lines_each]) for i in range(0, count * lines_each, lines_each)]
    return public_tokens(model, [c for c in chunks if c], vocab_size, 48)


def public_tokens(model, texts: list[str], vocab_size: int, random_length: int) -> list[list[int]]:
    """``texts`` in the model's own tokens; a model saved without a tokenizer (a random
    test model) gets seeded random ids instead, ``random_length`` per text."""
    from secptune.checkpoints import load_tokenizer
    from secptune.errors import CheckpointError

    try:
        tokenizer = load_tokenizer(model.config._name_or_path)
    except CheckpointError as exc:
        log.info("public text as seeded random token ids: %s", exc)
        g = torch.Generator().manual_seed(0)
        return [torch.randint(0, vocab_size, (random_length,), generator=g).tolist() for _ in texts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def run_public_text(arch, weights, sequences, nonlinear, capture: bool = False):
    """The model on each public sequence (exactly as a forward pass would run it);
    ``capture``: the returned model's ``capture`` lists every layer's attention inputs."""
    from secptune.transformer import Batch, Transformer

    model = Transformer(arch, weights, nonlinear)
    model.capture = [] if capture else None
    with torch.no_grad():
        for ids in batches(sequences, arch):
            h = weights["emb.word"][ids]
            if arch.family == "causal":
                model._causal(h)
            else:
                if "emb.type" in weights:
                    h = h + weights["emb.type"][0]
                model._encoder(h, Batch(token_onehot=None, prompt=None, pred_onehot=None))
    return model


def batches(sequences, arch, size: int = BATCH) -> list[torch.Tensor]:
    """Token-id batches [b, n]: runs of equal-length sequences (no padding needed)."""
    out: list[torch.Tensor] = []
    for ids in sequences:
        ids = torch.tensor([min(t, arch.vocab_size - 1) for t in ids[: arch.max_positions - 8]])
        if out and out[-1].size(1) == ids.numel() and out[-1].size(0) < size:
            out[-1] = torch.cat([out[-1], ids.unsqueeze(0)])
        else:
            out.append(ids.unsqueeze(0))
    return out


def _bound(largest: float) -> float:
    return max(STEP, math.ceil(largest * MARGIN / STEP) * STEP)


def with_activation_bounds(model, arch, weights, sequences=None, attention=None):
    """``arch`` with ``act_bounds`` measured on public text (one entry per layer).

    Given ``sequences`` and an RFA ``attention`` (the server's fitted hybrid), the model
    runs with that attention and the bounds only grow: RFA's small errors shift the
    activations a little, and a bound is only right if it covers what the secure run sees.
    """
    from secptune.transformer import Nonlinear
    from rfa.config import SOFTMAX

    seen: list[float] = []

    class Recorder(Nonlinear):
        def _act(self, x, name, bound):
            seen.append(float(x.abs().max()))
            return super()._act(x, name, bound)

    sequences = public_sequences(model, arch.vocab_size) if sequences is None else sequences
    run_public_text(arch, weights, sequences, Recorder(exact=True, attention=attention or SOFTMAX))
    per_layer = [max(seen[i :: arch.layers]) for i in range(arch.layers)]
    bounds = tuple(_bound(v) for v in per_layer)
    if arch.family == "encoder":
        bounds += (max(bounds),)  # the LM head's dense layer: not reached by the pass above
    if arch.act_bounds:
        bounds = tuple(max(a, b) for a, b in zip(bounds, arch.act_bounds))
    return replace(arch, act_bounds=bounds)
