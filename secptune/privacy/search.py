"""Left-to-right exhaustive search: the decisive reconstruction attack on a causal bottom model.

In a causal (decoder) model row t of the bottom model's output depends only on tokens 0..t.
So an attacker who knows the bottom's weights recovers a text one position at a time: with
tokens 0..t−1 already chosen, it pushes *every* vocabulary token through the bottom at
position t (batched, the chosen prefix's keys and values cached per layer, so a candidate
costs one row of the bottom layers) and keeps the token whose output lands nearest the
received row (L2).  Cost: V rows per position (tiny-llama: 1,024; SmolLM2: 49,152, in chunks).

Where the view is the bottom's output exactly (an unprotected split) the truth lands at
distance ~0; through a ``bits``-bit per-row quantiser it lands within √H·step/2 (the
quantiser's error bound, step readable from the received row itself).  So the vocabulary
is walked in an order (a learned attack's top guesses for the row first, then public token
frequency) and a position stops at the first candidate within that bound: on an exact view
most positions cost one chunk.  Where nothing is within the bound (noise, a regulariser the
attacker does not model, a bottom whose weights it does not know) the whole vocabulary is
walked and the nearest token wins — the search then fails gracefully, as it should.

The attacker's knowledge is whatever bottom it is handed: the suite runs it with the run's
final bottom (white box: ``whitebox_search``) and, for ``--mode guarded``, with the
*pretrained* input adapter (``public_search``: what a server that never saw the client's
private adapter knows).  Every split mode of this project has a causal bottom; encoders
would need the relaxed optimisation (:mod:`secptune.privacy.whitebox`) instead.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from secptune.transformer import Transformer


def frequency_order(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Every token id, the ones public text uses most first (ties and unseen ones: by id)."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=vocab_size)[:vocab_size].double()
    # stable: a descending sort of counts, ids ascending within equal counts
    return torch.sort(-counts, stable=True).indices


class CausalSearch:
    """Per text, left to right: the token whose bottom-model row lands nearest the received one.

    ``model``/``layers``: the bottom as a :class:`Transformer` and the layers it runs (its
    ``emb.word`` is the candidates' embedding table); ``bits``: the wire's quantisation (32:
    none) for the early-exit bound; ``order``: the public walk order of the vocabulary;
    ``proposer(rows, k)``: optional per-row first guesses [n, k]; ``chunk``: candidate rows
    per forward (memory: chunk × H per layer); ``limit``: texts attacked (the first ones);
    ``walk``: at most this many tokens walked per position (None: the whole vocabulary; the
    suite caps large vocabularies at the tokens public text contains, as the learned attacks)."""

    per_item = True

    def __init__(self, model: Transformer, layers, bits: int = 32, order: torch.Tensor | None = None,
                 proposer=None, top: int = 64, chunk: int = 4096, limit: int = 64, progress: bool = True,
                 walk: int | None = None):
        self.model, self.layers = model, list(layers)
        # the model's fixed prefix (keys/values every sequence starts from, e.g. BOS) opens the cache
        self.prefix = {k: v for k, v in model.w.items() if k.endswith((".pk", ".pv"))}
        self.prefix_len = next(iter(self.prefix.values())).size(1) if self.prefix else 0
        self.table = model.w["emb.word"]
        V = self.table.size(0)
        self.order = torch.arange(V) if order is None else order.long()
        self.bits, self.proposer, self.top, self.chunk, self.limit = bits, proposer, top, chunk, limit
        self.progress, self.walk = progress, walk
        self.rows_run = 0  # candidate rows pushed through the bottom (the attack's cost)

    # -- the bound a true token's row meets --------------------------------------
    def bound(self, y: torch.Tensor) -> float:
        """L2 distance within which the true token's row lies from the received row ``y`` [H]:
        the quantiser's √H·step/2 (step = the row's range / (2^bits − 1)), plus float slack."""
        slack = 1e-4 * float(y.norm()) + 1e-6
        if self.bits >= 32:
            return slack
        step = float(y.max() - y.min()) / (2**self.bits - 1)
        return math.sqrt(y.numel()) * step / 2 * 1.001 + slack

    # -- the bottom, one position at a time ----------------------------------------
    def _forward(self, ids: torch.Tensor, cache: dict, position: int, capture: dict | None = None) -> torch.Tensor:
        """Rows at ``position`` [c, H] for candidate tokens ``ids`` [c], after the cached prefix."""
        h = self.table[ids].unsqueeze(1)
        if not self.layers:
            return h[:, 0]
        cached = next(iter(cache.values())).size(1) - self.prefix_len if cache else 0  # text rows cached
        model = Transformer(self.model.arch, {**self.model.w, **cache}, self.model.nl)
        out = model.causal(h, capture=capture, layers=self.layers, positions=torch.tensor([position - cached]))
        return out[:, 0]

    def start(self) -> dict:
        """The cache before a text's first row: the model's fixed prefix, if it has one."""
        return dict(self.prefix)

    def _extend(self, cache: dict, token: int, position: int) -> dict:
        """The cache with ``token``'s keys and values at ``position`` appended (every layer)."""
        if not self.layers:
            return cache
        new: dict = {}
        self._forward(torch.tensor([token]), cache, position, capture=new)
        return {k: torch.cat([cache[k], v], dim=1) if k in cache else v for k, v in new.items()}

    def _walk(self, row_guesses: torch.Tensor | None) -> torch.Tensor:
        order = self.order if self.walk is None else self.order[: self.walk]
        if row_guesses is None:
            return order
        first = row_guesses.long()  # a top-k: distinct already
        return torch.cat([first, order[~torch.isin(order, first)]])

    @torch.no_grad()
    def invert(self, target: torch.Tensor, positions: torch.Tensor, guesses: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [m] for one text's received rows ``target`` [m, H] at ``positions`` [m]."""
        target = target.to(self.table.dtype)
        out = torch.empty(target.size(0), dtype=torch.long)
        cache = self.start()
        for t in range(target.size(0)):
            y, pos, bound = target[t], int(positions[t]), self.bound(target[t])
            best, best_d = 0, math.inf
            walk = self._walk(None if guesses is None else guesses[t])
            for chunk in walk.split(self.chunk):
                d = (self._forward(chunk, cache, pos) - y).norm(dim=-1)
                self.rows_run += len(chunk)
                i = int(d.argmin())
                if float(d[i]) < best_d:
                    best, best_d = int(chunk[i]), float(d[i])
                if best_d <= bound:
                    break
            out[t] = best
            cache = self._extend(cache, best, pos)
        return out

    def on_items(self, rows: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Token guesses for the first ``limit`` items."""
        rows, positions = rows[: self.limit], positions[: self.limit]
        out = []
        for r, p in tqdm(list(zip(rows, positions)), desc="causal search", unit="text", leave=False,
                         disable=not self.progress):
            guesses = None if self.proposer is None else self.proposer(r.float(), self.top)
            out.append(self.invert(r.float(), p, guesses))
        return out
