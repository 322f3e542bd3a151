"""Server side: which layers run RFA, chosen by the server on its own held-out public text.

Layers differ a lot in what fitted RFA costs the model (SmolLM2: one RFA layer
alone moves the next-token distribution by a KL of 0.005 in layer 28 but 0.11 in
layer 1).  The server ranks the layers by that damage, then keeps the longest
prefix of the ranking whose hybrid stays within ``auto_kl`` of exact softmax.
Everything runs in plaintext with the secure run's own approximations (what the
secure run will compute), on text the feature-map fit never saw.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm import tqdm

from mpc import approx
from rfa.config import AttentionConfig
from secptune.server.public_text import batches
from secptune.nonlinear import ExactNonlinear, Nonlinear
from secptune.transformer import Transformer


def _log_probs(arch, weights, sequences, nonlinear) -> list[torch.Tensor]:
    """Per batch of public text: the model's output log-distribution at every position (float32)."""
    model = Transformer(arch, weights, nonlinear)
    head = (weights["head.out"], weights.get("head.bias"))
    with torch.no_grad():
        return [torch.log_softmax(model.score(model.hidden_of_ids(ids), head), -1).float() for ids in batches(sequences, arch)]


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
    reference = _log_probs(arch, weights, sequences, ExactNonlinear())
    warnings: dict[tuple, dict] = {}

    def kl_with(rfa: set[int]) -> float:
        nl = Nonlinear(cfg=approx.ApproxConfig(), attention=_hybrid(base, rfa, arch.layers))
        value = _kl(reference, _log_probs(arch, weights, sequences, nl))
        warnings[tuple(sorted(rfa))] = dict(nl.monitor.violations)
        return value

    show = arch.layers >= 4
    if damage is None:
        damage = [kl_with({i}) for i in tqdm(layers, desc="RFA damage per layer", unit="layer", disable=not show)]
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
