"""The attack algorithms on a server's view of token representations (rows [n, H]).

Every learned attack is *adaptive*: it is fitted on public text pushed through the same
mechanism with the same public parameters (:mod:`secptune.privacy.suite` builds that
training set), so it learns whatever deterministic structure the mechanism keeps (a
crafted mean, a split layer's mixing) instead of assuming isotropic noise on embeddings.
All are small enough for a 2-core CPU: closed forms, one matrix product, or a one-hidden-
layer network trained for a bounded time.
"""

from __future__ import annotations

import time

import torch

_CHUNK = 2048  # query rows per similarity product


def _chunked_argmax(queries: torch.Tensor, keys: torch.Tensor, score) -> torch.Tensor:
    out = []
    for q in queries.split(_CHUNK):
        out.append(score(q, keys).argmax(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _neg_sq_dist(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return 2 * q @ k.T - k.square().sum(-1)  # −‖q − k‖² up to a per-query constant


def nearest_token(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Non-adaptive inversion: the vocabulary row nearest (L2) to each received row."""
    return _chunked_argmax(rows.float(), table.float(), _neg_sq_dist)


def nearest_public(rows: torch.Tensor, train_rows: torch.Tensor, train_ids: torch.Tensor) -> torch.Tensor:
    """Adaptive 1-NN: the token of the nearest public mechanism output."""
    return train_ids[_chunked_argmax(rows.float(), train_rows.float(), _neg_sq_dist)]


class RidgeInversion:
    """Adaptive linear inversion: a ridge map from mechanism outputs to the clean input
    embedding of their token, decoded by cosine nearest neighbour over the vocabulary."""

    def __init__(self, train_rows: torch.Tensor, train_ids: torch.Tensor, table: torch.Tensor, ridge: float = 1e-2):
        x = train_rows.double()
        self.mean = x.mean(0)
        x = x - self.mean
        y = table[train_ids].double()
        gram = x.T @ x
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.size(0), dtype=gram.dtype)
        self.w = torch.linalg.solve(gram, x.T @ y).float()
        self.unit = torch.nn.functional.normalize(table.float(), dim=-1)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        mapped = torch.nn.functional.normalize((rows.double() - self.mean).float() @ self.w, dim=-1)
        return _chunked_argmax(mapped, self.unit, lambda q, k: q @ k.T)


class MLPInversion:
    """Adaptive learned inversion: a one-hidden-layer network from a mechanism output to
    its token, over the tokens the public text contains (others cannot be named: counted
    as misses).  Trained with Adam until ``seconds`` run out or ``epochs`` are done."""

    def __init__(self, train_rows: torch.Tensor, train_ids: torch.Tensor, hidden: int = 512, epochs: int = 8,
                 seconds: float = 120.0, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)  # the attack's own randomness (public, not noise)
        self.vocab, target = torch.unique(train_ids, return_inverse=True)
        x = train_rows.float()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        x = (x - self.mean) / self.std
        H = x.size(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(H, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, len(self.vocab)))
        opt = torch.optim.Adam(self.net.parameters(), lr=2e-3, weight_decay=1e-5)
        started = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for idx in order.split(256):
                loss = torch.nn.functional.cross_entropy(self.net(x[idx]), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if time.perf_counter() - started > seconds:
                break

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        x = (rows.float() - self.mean) / self.std
        return self.vocab[torch.cat([self.net(q).argmax(-1) for q in x.split(_CHUNK)])]

    @torch.no_grad()
    def top(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` likeliest tokens per row [n, k] (candidates for a white-box refinement)."""
        x = (rows.float() - self.mean) / self.std
        k = min(k, len(self.vocab))
        return self.vocab[torch.cat([self.net(q).topk(k, dim=-1).indices for q in x.split(_CHUNK)])]


class LogisticProbe:
    """Attribute inference: multinomial logistic regression on a text's mean row."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300, l2: float = 1e-3):
        x = features.float()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        x = (x - self.mean) / self.std
        self.lin = torch.nn.Linear(x.size(1), classes)
        opt = torch.optim.LBFGS(self.lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.lin(x), labels) + l2 * self.lin.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.lin((features.float() - self.mean) / self.std).argmax(-1)


def length_from_tokens(guesses: torch.Tensor, pad_id: int) -> int:
    """A text's length from its guessed tokens: rows before the trailing run of padding."""
    n = len(guesses)
    while n > 0 and int(guesses[n - 1]) == pad_id:
        n -= 1
    return n
