"""Public side tables of PrivTune's mechanism: n-hop neighbour targets and token importance.

Both are functions of public material only (the model's embedding table, a public
labelled pool), so the server and every attack can rebuild them exactly; what stays
with the owner is which tokens it looks up.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

_ROWS = 1024  # embedding rows per similarity product: [1024, V] float32 at a time


class NeighbourGraph:
    """The k-nearest-neighbour graph (cosine) of an embedding table [V, H], built lazily:
    only tokens that are looked up (and their neighbours, to ``hops`` levels) are computed."""

    def __init__(self, table: torch.Tensor, k: int):
        self.unit = torch.nn.functional.normalize(table.float(), dim=-1)
        self.table = table
        self.k = k
        self._knn: dict[int, list[int]] = {}

    def neighbours(self, tokens: list[int]) -> None:
        """Compute (and cache) the k nearest neighbours of ``tokens``, self excluded."""
        todo = sorted({t for t in tokens if t not in self._knn})
        for i in range(0, len(todo), _ROWS):
            rows = torch.tensor(todo[i : i + _ROWS])
            sims = self.unit[rows] @ self.unit.T
            sims[torch.arange(len(rows)), rows] = -math.inf
            for t, nb in zip(rows.tolist(), sims.topk(self.k, dim=-1).indices.tolist()):
                self._knn[t] = nb

    def ring(self, tokens: list[int], hops: int) -> dict[int, list[int]]:
        """Each token's n-hop *indirect* neighbours: graph distance exactly ``hops``
        (falling back to the farthest non-empty ring, so no token is left without one)."""
        frontier = {t: {t} for t in tokens}
        seen = {t: {t} for t in tokens}
        out = {t: [] for t in tokens}
        for _ in range(hops):
            self.neighbours([u for f in frontier.values() for u in f])
            for t in tokens:
                nxt = {v for u in frontier[t] for v in self._knn[u]} - seen[t]
                if nxt:
                    seen[t] |= nxt
                    frontier[t] = nxt
                    out[t] = sorted(nxt)
        return out

    def targets(self, ids: torch.Tensor, hops: int) -> torch.Tensor:
        """Target embeddings [*ids.shape, H]: the mean embedding of each id's n-hop ring."""
        flat = ids.reshape(-1).tolist()
        rings = self.ring(sorted(set(flat)), hops)
        means = {t: self.table[torch.tensor(r)].double().mean(0) for t, r in rings.items()}
        return torch.stack([means[t] for t in flat]).reshape(*ids.shape, -1)


class Importance:
    """Token importance in [0, 1] (PrivTune's "TF-IDF-like and entropy-weighted cues", as read
    here): tf-idf of the token in its text (idf from a public corpus) times how much the
    token says about the label in a public labelled pool (1 − normalised label entropy,
    add-one smoothed), scaled so each text's most important token has 1."""

    def __init__(self, docs: list[list[int]], labels: list[int], classes: int):
        self.n_docs = len(docs)
        self.df = Counter(t for d in docs for t in set(d))
        counts: dict[int, list[int]] = {}
        for d, y in zip(docs, labels):
            for t in set(d):
                counts.setdefault(t, [0] * classes)[y] += 1
        self.informative = {t: 1.0 - _entropy([c + 1 for c in cs]) / math.log(classes) for t, cs in counts.items()}

    def of(self, ids: list[int]) -> torch.Tensor:
        """Importance [len(ids)] of each token of one text."""
        tf = Counter(ids)
        raw = torch.tensor([
            tf[t] / len(ids) * math.log((1 + self.n_docs) / (1 + self.df.get(t, 0))) * self.informative.get(t, 0.0)
            for t in ids
        ], dtype=torch.float64)
        top = raw.max() if len(raw) else 0.0
        return raw / top if top > 0 else raw


def _entropy(counts: list[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)
