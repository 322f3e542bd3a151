"""Server side: which layers run RFA, chosen by the server on its own held-out public text.

Layers differ a lot in what fitted RFA costs the model (SmolLM2: one RFA layer
alone moves the next-token distribution by a KL of 0.005 in layer 28 but 0.11 in
layer 1).  The server ranks the layers by that damage, then keeps the longest
prefix of the ranking whose hybrid stays within ``auto_kl`` of exact softmax.
Everything runs in plaintext with the secure run's own approximations (what the
secure run will compute), on text the feature-map fit never saw, in float32 (the
approximations in float32 agree with the float64 oracle to ~1e-5: issue 26's check,
reports/f32_oracle.json; float64 made the damage passes 5 of SmolLM2's 23 minutes).
A causal model's one-layer hybrids share the all-softmax run up to their RFA layer:
that run's hidden states are kept per layer and each hybrid starts from its own,
which halves the per-layer passes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm import tqdm

from mpc import approx
from rfa.config import AttentionConfig
from secptune.devices import flushed_subnormals
from secptune.server.parallel import map_jobs
from secptune.server.public_text import batches
from secptune.nonlinear import ExactNonlinear, Nonlinear
from secptune.transformer import Transformer


def _log_probs(arch, weights, sequences, nonlinear) -> list[torch.Tensor]:
    """Per batch of public text: the model's output log-distribution at every position (float32)."""
    model = Transformer(arch, weights, nonlinear)
    with torch.no_grad(), flushed_subnormals(torch.float32):
        return [_output(model, model.hidden_of_ids(ids)) for ids in batches(sequences, arch)]


def _output(model: Transformer, hidden) -> torch.Tensor:
    head = (model.w["head.out"], model.w.get("head.bias"))
    return torch.log_softmax(model.score(hidden, head), -1).float()


def _layer_inputs(arch, weights, sequences, nonlinear) -> list[list[torch.Tensor]]:
    """Per layer i, per batch: the hidden states entering layer i (a causal model's run
    under ``nonlinear``, one layer at a time)."""
    model = Transformer(arch, weights, nonlinear)
    out: list[list[torch.Tensor]] = [[] for _ in range(arch.layers)]
    with torch.no_grad(), flushed_subnormals(torch.float32):
        for ids in batches(sequences, arch):
            h = weights["emb.word"][ids]
            for i in range(arch.layers):
                out[i].append(h)
                h = model.causal(h, layers=range(i, i + 1))
    return out


def _log_probs_from(arch, weights, inputs: list[torch.Tensor], first: int, nonlinear) -> list[torch.Tensor]:
    """:func:`_log_probs` of a run that starts at layer ``first`` from its ``inputs``."""
    model = Transformer(arch, weights, nonlinear)
    with torch.no_grad(), flushed_subnormals(torch.float32):
        return [_output(model, model.causal(h, layers=range(first, arch.layers))) for h in inputs]


def _kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """Mean KL(reference || other) per position, nats."""
    total = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(reference, other))
    return total / sum(r.numel() // r.size(-1) for r in reference)


def choose_layers(arch, weights, sequences, attention: AttentionConfig, damage: list[float] | None = None) -> dict:
    """The server's RFA layers for ``attention`` (with every layer's fitted maps in ``weights``):
    ``{"rfa_layers", "kl", "damage", "order", "range_warnings", "budget"}``.  ``damage``: the
    per-layer KLs of an earlier choice on the same model and text (they do not depend on the
    budget, and cost one pass per layer)."""
    base = replace(attention, auto_kl=None)
    layers = range(arch.layers)
    weights = {name: t.float() if t.is_floating_point() else t for name, t in weights.items()}
    reference = _log_probs(arch, weights, sequences, ExactNonlinear())
    warnings: dict[tuple, dict] = {}

    def nonlinear(rfa: set[int]) -> Nonlinear:
        return Nonlinear(cfg=approx.ApproxConfig(), attention=_hybrid(base, rfa, arch.layers))

    def kl_with(rfa: set[int]) -> float:
        nl = nonlinear(rfa)
        value = _kl(reference, _log_probs(arch, weights, sequences, nl))
        warnings[tuple(sorted(rfa))] = dict(nl.monitor.violations)
        return value

    show = arch.layers >= 4
    if damage is None:  # one pass per layer, side by side (secptune.server.parallel)
        if arch.family == "causal":
            inputs = _layer_inputs(arch, weights, sequences, nonlinear(set()))

            def one(i: int) -> float:
                return _kl(reference, _log_probs_from(arch, weights, inputs[i], i, nonlinear({i})))
        else:  # an encoder's stack runs whole

            def one(i: int) -> float:
                return kl_with({i})

        damage = map_jobs(one, list(layers), "RFA damage per layer", "layer", show=show)
    order = sorted(layers, key=damage.__getitem__)
    # the longest prefix within budget: the hybrid's KL grows with the prefix (bisect)
    good, bad, kls = 0, arch.layers + 1, {}
    with tqdm(desc="choosing RFA layers", unit="try", disable=not show) as progress:
        while bad - good > 1:
            mid = (good + bad) // 2
            kls[mid] = kl_with(set(order[:mid]))
            good, bad = (mid, bad) if kls[mid] <= attention.auto_kl else (good, mid)
            progress.update()
    chosen = sorted(order[:good])
    return {
        "rfa_layers": chosen, "kl": kls.get(good, 0.0), "budget": attention.auto_kl, "damage": damage,
        "order": order, "tried": {str(n): kl for n, kl in sorted(kls.items())},
        "range_warnings": warnings.get(tuple(chosen), {}),
    }  # fmt: skip


def _hybrid(attention: AttentionConfig, rfa: set[int], layers: int) -> AttentionConfig:
    return replace(attention, softmax_layers=tuple(i for i in range(layers) if i not in rfa))
