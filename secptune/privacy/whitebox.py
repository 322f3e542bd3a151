"""Attacks that use the owner's bottom model as a white box (the strongest assumption the
suite makes: the attacker knows the weights that produced the rows it received).

* :class:`OptimisedInversion` — optimisation-based data reconstruction from activations
  (the data-reconstruction attack GuardedTuning defends against, arXiv 2501.04323; the
  relaxed-embedding form follows the optimisation attacks on split LLMs, e.g. BiSR,
  arXiv 2409.00960): per text, a free (relaxed) embedding per row, pushed through the
  bottom model; Adam minimises the relative squared distance to the received rows; each
  row's 16 nearest vocabulary rows (cosine), with the adaptive MLP's 16 likeliest tokens for
  the row (the learning-based half, as BiSR combines both), are its candidates, and a causal left-to-right
  pass picks, per row, the candidate whose forward lands nearest the received row.  (Tried
  first on tiny-llama's unprotected first layer: a softmax mixture over the vocabulary from a
  uniform start recovered 4.5 % of tokens in 150 steps, and plain L2 rounding of the relaxed
  embeddings 0–9 %: a pre-norm block's output hardly depends on its input's scale.)
* :class:`GuardedPipeline` — a guarded run's owner side as the suite's attacker rebuilds
  it (input adapter + the wire's quantiser), in the interface of
  :class:`secptune.split.SplitOwner` (``clean``/``release``) so every learned attack,
  null and game of the suite runs on it unchanged.
* :func:`gradient_features` — the label-inference attack on gradients (Online): the
  attacker simulates the owner's output adapter (pretrained weights, public) on public
  labelled text, computes the gradient the owner would send, and fits a probe from the
  normalised row-sum of that gradient to the label.
"""

from __future__ import annotations

import torch

from secptune.guarded import GuardedClient, GuardedServer, cross_entropy, quantise
from secptune.privacy import attacks
from secptune.split import Release


class GuardedPipeline:
    """Owner side of ``--mode guarded`` as the attacker models it: rows = quantised A(emb(ids))."""

    def __init__(self, client: GuardedClient, bits: int):
        self.client, self.bits = client, bits
        self.bottom = client.inp

    @torch.no_grad()
    def clean(self, ids: torch.Tensor, positions: torch.Tensor) -> dict:
        return {"ids": ids, "positions": positions, "h": self.client.activations(ids)[1].float()}

    def release(self, state: dict, prompt_start: int) -> Release:
        return Release(quantise(state["h"], self.bits)[0], state["positions"], prompt_start)

    def function(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The differentiable bottom: embeddings [B, m, H] -> rows [B, m, H]."""
        return self.bottom.run(embeds.to(self.client.dtype))


class OptimisedInversion:
    """Relaxed-embedding reconstruction through a white-box bottom ``function(embeds, positions)``."""

    per_item = True

    def __init__(self, function, table: torch.Tensor, vocab: torch.Tensor | None = None, steps: int = 150,
                 lr: float = 0.05, limit: int = 64, chunk: int = 16, seed: int = 0, top: int = 16, proposer=None):
        self.function, self.steps, self.lr, self.limit, self.chunk, self.seed = function, steps, lr, limit, chunk, seed
        self.top, self.proposer = top, proposer
        self.vocab = torch.arange(table.size(0)) if vocab is None else vocab
        self.table = table.float()[self.vocab]

    def on_items(self, rows: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Token guesses for the first ``limit`` items (texts of one layout optimised together)."""
        rows, positions = rows[: self.limit], positions[: self.limit]
        groups: dict[tuple, list[int]] = {}
        for i, (r, p) in enumerate(zip(rows, positions)):
            groups.setdefault((r.shape[0], tuple(p.tolist())), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(rows)
        gen = torch.Generator().manual_seed(self.seed)  # the attack's own public randomness
        for (_, pos), members in groups.items():
            for start in range(0, len(members), self.chunk):
                idx = members[start : start + self.chunk]
                for i, ids in zip(idx, self._invert(torch.stack([rows[i].float() for i in idx]), torch.tensor(pos), gen)):
                    out[i] = ids
        return out

    def _invert(self, target: torch.Tensor, positions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cand = self._candidates(target, positions, gen)
        if self.proposer is not None:  # a learned attack's top guesses join the relaxed ones
            proposed = self.proposer(target.reshape(-1, target.size(-1)), self.top)
            cand = torch.cat([cand, self._index(proposed).reshape(*target.shape[:2], -1)], dim=-1)
        return self._verify(target, positions, cand)

    def _index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> indices into this attack's candidate vocabulary (absent ones: its first)."""
        where = torch.full((int(self.vocab.max()) + 1,), 0, dtype=torch.long)
        where[self.vocab] = torch.arange(len(self.vocab))
        return where[token_ids.clamp(max=len(where) - 1)]

    def _candidates(self, target: torch.Tensor, positions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Relaxed embeddings: one free direction per row (its norm held at the embeddings'
        typical norm: a pre-norm block barely depends on it), fitted so the bottom model maps
        them onto the received rows; the ``top`` candidate tokens per row by cosine [b, m, top]."""
        norm = float(self.table.norm(dim=-1).mean())
        with torch.enable_grad():
            u = torch.randn(*target.shape[:2], self.table.size(1), generator=gen).requires_grad_(True)
            opt = torch.optim.Adam([u], lr=self.lr)
            scale = target.square().sum(-1).clamp_min(1e-8)
            for _ in range(self.steps):
                out = self.function(norm * torch.nn.functional.normalize(u, dim=-1), positions).float()
                loss = ((out - target).square().sum(-1) / scale).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        cos = torch.nn.functional.normalize(u.detach(), dim=-1) @ torch.nn.functional.normalize(self.table, dim=-1).T
        return cos.topk(min(self.top, cos.size(-1)), dim=-1).indices

    @torch.no_grad()
    def _verify(self, target: torch.Tensor, positions: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Causal rounding, left to right: row t depends on tokens 0..t only, so each row's token is
        the candidate whose forward (after the tokens already chosen) lands nearest its row."""
        b, m, k = cand.shape
        chosen = cand[:, :, 0].clone()
        for t in range(m):
            seq = chosen[:, : t + 1].repeat_interleave(k, 0)  # [b·k, t+1]
            seq[:, t] = cand[:, t].reshape(-1)
            out = self.function(self.table[seq], positions[: t + 1]).float()[:, t]
            dist = (out - target[:, t].repeat_interleave(k, 0)).square().sum(-1).reshape(b, k)
            chosen[:, t] = cand[:, t].gather(1, dist.argmin(1, keepdim=True)).squeeze(1)
        return self.vocab[chosen]


def gradient_features(grads: torch.Tensor) -> torch.Tensor:
    """[k, m, H] gradients (rows of one text) -> [k, H] unit row sums: the direction that carries
    the label (the CE gradient is linear in softmax − one-hot)."""
    s = grads.float().sum(-2)
    return s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def simulated_gradients(client: GuardedClient, server: GuardedServer, batches, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the owner would send up for public labelled batches [(ids, pred, labels)], with the
    attacker's copy of the output adapter: (features [N, H], labels [N])."""
    feats, labels = [], []
    for ids, pred, y in batches:
        with torch.no_grad():
            z = quantise(client.activations(ids)[1], bits)[0]
            v = quantise(server.backbone.run(z.to(client.dtype)), bits)[0]
        v = v.to(client.dtype).requires_grad_(True)
        with torch.enable_grad():
            cross_entropy(client.out.score(v, pred), y).backward()
        feats.append(gradient_features(quantise(v.grad, bits)[0]))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
