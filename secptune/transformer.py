"""One transformer definition for plaintext and secret-shared execution.

The same code runs on float64 torch tensors and on CrypTen MPCTensors; only the
non-linear steps differ, and those are a strategy (secptune.nonlinear): the exact
functions (plaintext: reproduces Hugging Face), the MPC-friendly approximations of
:mod:`mpc.approx` (on plaintext the *oracle* the secure run must match), or the
training baselines' differentiable forms.  Products go through
:func:`mpc.tensorops.matmul`, so the model names no protocol type.

Inputs are arranged so that nothing the data owner holds has to be public:
token ids arrive as one-hot rows, the prompt as an additive embedding, the key
padding mask and the prediction position as secret 0/1 tensors.  Public are only
the batch size, the padded length and the number of label words.
"""

from __future__ import annotations

import math

import torch

from mpc.accounting import section
from mpc.tensorops import cat, is_secure, matmul, pad, public_like
from rfa.random_features import rfa_attention
from secptune.arch import Arch
from secptune.batch import Batch, OneHot
from secptune.nonlinear import Nonlinear


def insert_prompt(token_embeds, prompt, start: int):
    """Add the prompt at its slots (whose token rows are zero), keeping type embeddings."""
    P, n = prompt.size(1), token_embeds.size(1)
    if P == 0:
        return token_embeds
    return token_embeds + pad(prompt, (0, 0, start, n - start - P))


def rope_tables(arch: Arch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Public cos/sin tables [n, head_dim] for positions 0..n-1."""
    d = arch.head_dim
    inv_freq = 1.0 / (arch.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def prompt_first(arch: Arch, prompt_start: int, prompt_len: int, texts_per_prompt: int) -> bool:
    """Whether a forward runs each prompt once (:meth:`Transformer._forward_prompt_first`): a causal
    model whose prompt comes first, shared by more than one text (with one there is nothing to save)."""
    return arch.family == "causal" and prompt_start == 0 and prompt_len > 0 and texts_per_prompt > 1


def _per_sequence(x, repeat: int):
    """[R, ...] -> [R·repeat, ...]: row r serves the ``repeat`` consecutive sequences r·repeat …"""
    return x.unsqueeze(1).expand(x.size(0), repeat, *x.shape[1:]).reshape(x.size(0) * repeat, *x.shape[1:])


def _rotate_half(x):
    last, half = x.dim() - 1, x.size(-1) // 2  # a non-negative dim: CrypTen's narrow backward needs one
    return cat([x.narrow(last, half, half) * -1, x.narrow(last, 0, half)], dim=last)


def _onehot_product(onehot, table):
    """onehot @ table; on plaintext a row lookup (same result, without a [n, V] x [V, H]
    product), under MPC the secure product that hides both the ids and the table."""
    if isinstance(onehot, OneHot):  # before is_secure: a OneHot is no torch tensor either
        present = (onehot.ids >= 0).unsqueeze(-1).to(table.dtype)
        return table[onehot.ids.clamp(min=0)] * present
    if is_secure(onehot):
        return onehot @ table
    present = onehot.sum(-1, keepdim=True)
    return table[onehot.argmax(-1)] * present


def causal_penalty(n: int, repeat: int = 1) -> torch.Tensor:
    """Public [repeat*n, n] penalty mask: 1 where a query would see a future key."""
    future = torch.triu(torch.ones(n, n, dtype=torch.float64), diagonal=1)
    return future.repeat(repeat, 1)


class Transformer:
    """Forward pass of an encoder masked LM or a Llama-style causal LM."""

    def __init__(self, arch: Arch, weights: dict, nonlinear: Nonlinear):
        self.arch = arch
        self.w = weights
        self.nl = nonlinear
        self.capture: list | None = None  # set to a list to record every layer's attention inputs

    # -- work that depends only on fixed inputs: done once per run ------------
    def embed_tokens(self, token_onehot, type_onehot=None):
        """Text-token embeddings by one-hot product (secure lookup of a secret table)."""
        emb = _onehot_product(token_onehot, self.w["emb.word"])
        if type_onehot is not None:
            emb = emb + type_onehot @ self.w["emb.type"]
        elif "emb.type" in self.w:
            # encoders without pairs: token type 0 (narrow, not indexing: CrypTen's autograd
            # does not see an indexed CrypTensor, the training baselines need it to)
            emb = emb + self.w["emb.type"].narrow(0, 0, 1)
        return emb

    def label_head(self, verbalizer_onehot):
        """Output rows of the label words only: [L, H] (+ bias [L] for encoders)."""
        rows = _onehot_product(verbalizer_onehot, self.w["head.out"])
        bias = verbalizer_onehot @ self.w["head.bias"] if "head.bias" in self.w else None
        return rows, bias

    # -- the per-candidate forward pass ---------------------------------------
    def forward(self, token_embeds, batch: Batch, head):
        """Label-word scores [B, L] at each example's prediction position."""
        shared = batch.shared_prompt
        if shared is not None and prompt_first(self.arch, batch.prompt_start, shared.size(1),
                                               token_embeds.size(0) // shared.size(0)):
            return self._forward_prompt_first(token_embeds, batch, head)
        h = insert_prompt(token_embeds, batch.prompt, batch.prompt_start)
        if self.arch.family == "encoder":
            h = self.encoder(h, batch)
        else:
            h = self.causal(h)
        pooled = (h * batch.pred_onehot.unsqueeze(-1)).sum(1)
        return self.score(pooled, head)

    def _forward_prompt_first(self, token_embeds, batch: Batch, head):
        """A causal model whose prompt comes first (right after the fixed prefix): the prompt's
        rows never see the text, so each of the R candidates' prompts runs once (a batch of R,
        not R·B) and every text attends to its keys/values as to the fixed prefix's.  The same
        outputs with P of each sequence's P + n rows computed once per candidate instead of
        once per text (SmolLM2, SST-2, prompt 10: ~30 % fewer rows per call; prompt 50: ~65 %).
        Plain sessions only: under MPC the second pass doubles the online rounds (secure.py)."""
        return self.forward_texts(self.prompt_states(batch.shared_prompt), token_embeds, batch, head)

    def prompt_states(self, prompts) -> dict:
        """The keys/values {layer: (k, v)} of R candidate prompts [R, P, H] run once, for
        :meth:`forward_texts` (a session may serve several groups of texts from one run)."""
        kept: dict = {}
        self.causal(prompts, keep=kept)
        return kept

    def forward_texts(self, kept: dict, token_embeds, batch: Batch, head):
        """Label-word scores of the R·B sequences ``token_embeds`` (row r·B + b: text b after
        prompt r, whose P slots come first and are skipped here) attending to ``kept``."""
        k = next(iter(kept.values()))[0]
        P, n = k.size(2), token_embeds.size(1)
        h = self.causal(token_embeds.narrow(1, P, n - P), prefix=kept, repeat=token_embeds.size(0) // k.size(0))
        pooled = (h * batch.pred_onehot.narrow(1, P, n - P).unsqueeze(-1)).sum(1)
        return self.score(pooled, head)

    def hidden_of_ids(self, ids: torch.Tensor, prompt: torch.Tensor | None = None, lead: int = 0) -> torch.Tensor:
        """Plaintext last hidden states [b, n, H] for token ids [b, n] (no padding): how the server
        runs its own model on its public text; ``prompt`` [P, H] rows go in after the first ``lead``
        tokens, where a tuned prompt sits (then n grows by P)."""
        h = self.w["emb.word"][ids]
        if prompt is not None:
            rows = prompt.to(h.dtype).unsqueeze(0).expand(h.size(0), -1, -1)
            h = torch.cat([h[:, :lead], rows, h[:, lead:]], dim=1)
        if self.arch.family == "causal":
            return self.causal(h)
        if "emb.type" in self.w:
            h = h + self.w["emb.type"][0]
        return self.encoder(h, Batch(token_onehot=None, prompt=None, pred_onehot=None))

    def _linear(self, x, name: str):
        """x @ W + b; x may be an opened norm output (then it is not opened again)."""
        with section("linear"):
            # a secure session's weights may be fixed-mask handles (mpc.fixed_weights) and x an
            # opened norm output (mpc.opened): matmul routes each pair to its protocol
            y = matmul(x, self.w[f"{name}.w"])
            bias = self.w.get(f"{name}.b")
            return y if bias is None else y + bias

    def _attend(self, i: int, q, k, v, penalty, rep: int = 0, offset: int = 0):
        """Layer i's attention: RFA or softmax as configured (rep > 0: causal, grouped)."""
        nl = self.nl
        if self.capture is not None:
            self.capture.append({"layer": i, "q": q, "k": k, "v": v, "penalty": penalty, "rep": rep, "offset": offset})
        with section("attention"):
            if not nl.attention.uses_rfa(i):
                return nl.softmax_attention(q, k, v, penalty)
            params = {name: self.w[f"l{i}.rfa.{name}"] for name in ("q", "k", "bq", "bk") if f"l{i}.rfa.{name}" in self.w}
            if "q" not in params:
                raise ValueError(f"layer {i} has no RFA feature matrices: build the weights with this attention config")
            if not rep:  # bidirectional: no mask or a per-key padding mask
                form = "linear"
            else:
                form = "prefix" if params["q"].size(-1) * q.size(-1) < q.size(-2) else "quadratic"
            return rfa_attention(
                q, k, v, params, penalty, nl.attention, nl.cfg, nl.monitor, form=form, rep=rep, offset=offset
            )

    def _heads(self, x, count: int):
        b, n = x.size(0), x.size(1)
        return x.reshape(b, n, count, self.arch.head_dim).transpose(1, 2)

    def _merge(self, x):
        b, n = x.size(0), x.size(2)
        return x.transpose(1, 2).reshape(b, n, self.arch.heads * self.arch.head_dim)

    def _residual(self, opened, norm: str):
        """x̂·γ + β of norm ``norm`` for the residual stream (post-norm models)."""
        with section("norm"):
            return opened.mul(self.w[norm + ".w"]) + self.w[norm + ".b"]

    def encoder(self, h, batch: Batch):
        """Post-norm layers; returns the last layer's normalised x̂ (its γ/β live in head.dense)."""
        a, w, nl = self.arch, self.w, self.nl
        n = h.size(1)
        if n > a.max_positions:
            raise ValueError(f"sequence of {n} tokens exceeds the model's {a.max_positions}")
        x = nl.normalize(h + w["emb.pos"].narrow(0, a.position_offset, n), a.norm_eps, centre=True)
        norm = "emb.ln"
        penalty = None if batch.key_penalty is None else batch.key_penalty.unsqueeze(1).unsqueeze(1)
        scale = 1.0 / math.sqrt(a.head_dim)
        for i in range(a.layers):
            p = f"l{i}."
            xo = nl.open(x)
            h = self._residual(xo, norm)
            q = self._heads(self._linear(xo, p + "q") * scale, a.heads)
            k = self._heads(self._linear(xo, p + "k"), a.heads)
            v = self._heads(self._linear(xo, p + "v"), a.heads)
            xo.release()
            ctx = self._attend(i, q, k, v, penalty)
            xo = nl.open(nl.normalize(h + self._linear(self._merge(ctx), p + "o"), a.norm_eps, centre=True))
            h = self._residual(xo, p + "ln1")
            ff = self._linear(nl.act(self._linear(xo, p + "ff1"), a.act, a.act_bound(i)), p + "ff2")
            xo.release()
            x = nl.normalize(h + ff, a.norm_eps, centre=True)
            norm = p + "ln2"
        return x

    def causal(self, h, capture: dict | None = None, layers: range | None = None, positions: torch.Tensor | None = None,
               keep: dict | None = None, prefix: dict | None = None, repeat: int = 1):
        """Llama layers.  Keys/values of the fixed prefix (``l{i}.pk/.pv``), when present,
        are prepended to every sequence's; ``capture`` collects this run's own k/v (its first
        sequence's), ``keep`` every sequence's ({layer: (k, v)}); ``prefix`` (a ``keep`` of an
        earlier run on R sequences) goes after the fixed prefix, sequence r's keys/values
        serving the ``repeat`` consecutive sequences r·repeat … of this run.

        ``layers`` (default: all) runs a slice of the stack, so a split model is this one
        model run in two pieces (:mod:`secptune.split`); ``positions`` [n] (increasing) are
        the rows' RoPE positions after the prefix when they are not 0..n-1 (rows left out
        of the sequence, e.g. prompt slots a later piece fills)."""
        a, w, nl = self.arch, self.w, self.nl
        b, n = h.size(0), h.size(1)
        layers = range(a.layers) if layers is None else layers
        first = f"l{layers[0] if len(layers) else 0}.pk"
        fixed = w[first].size(1) if first in w else 0
        offset = fixed + (next(iter(prefix.values()))[0].size(2) if prefix else 0)
        positions = torch.arange(n) if positions is None else positions.long().cpu()
        end = offset + int(positions.max()) + 1 if n else offset
        if end > a.max_positions:
            raise ValueError(f"sequence of {end} tokens exceeds the model's {a.max_positions}")
        cos, sin = rope_tables(a, end)  # angles in float64, then the session's precision
        cos, sin = public_like(cos[offset + positions], h), public_like(sin[offset + positions], h)
        rep = a.heads // a.kv_heads
        penalty = causal_penalty(n, rep)
        if offset:
            penalty = torch.cat([torch.zeros(rep * n, offset, dtype=torch.float64), penalty], dim=1)
        penalty = public_like(penalty, h)
        scale = 1.0 / math.sqrt(a.head_dim)
        for i in layers:
            p = f"l{i}."
            x = nl.open(nl.normalize(h, a.norm_eps, centre=False))
            q = self._heads(self._linear(x, p + "q"), a.heads)
            k = self._heads(self._linear(x, p + "k"), a.kv_heads)
            v = self._heads(self._linear(x, p + "v"), a.kv_heads)
            x.release()
            q = (q * cos + _rotate_half(q) * sin) * scale
            k = k * cos + _rotate_half(k) * sin
            if capture is not None:
                capture[p + "pk"], capture[p + "pv"] = k[0], v[0]
            if keep is not None:
                keep[i] = (k, v)
            if offset:
                ks = [w[p + "pk"].unsqueeze(0).expand(b, a.kv_heads, fixed, a.head_dim)] if fixed else []
                vs = [w[p + "pv"].unsqueeze(0).expand(b, a.kv_heads, fixed, a.head_dim)] if fixed else []
                if prefix:
                    ks.append(_per_sequence(prefix[i][0], repeat))
                    vs.append(_per_sequence(prefix[i][1], repeat))
                k, v = cat([*ks, k], dim=2), cat([*vs, v], dim=2)
            # grouped-query attention without copying k/v: the `rep` query heads
            # sharing a kv head are stacked along the query axis.
            q = q.reshape(b, a.kv_heads, rep * n, a.head_dim)
            ctx = self._attend(i, q, k, v, penalty, rep=rep, offset=offset)
            ctx = ctx.reshape(b, a.heads, n, a.head_dim)
            h = h + self._linear(self._merge(ctx), p + "o")
            x = nl.open(nl.normalize(h, a.norm_eps, centre=False))
            gated = nl.act(self._linear(x, p + "gate"), a.act, a.act_bound(i)) * self._linear(x, p + "up")
            x.release()
            h = h + self._linear(gated, p + "down")
        return h

    def score(self, pooled, head):
        a, nl = self.arch, self.nl
        rows, bias = head
        if a.family == "encoder":
            t = nl.act(self._linear(pooled, "head.dense"), a.act, a.act_bound(a.layers))
            t = nl.normalize(t, a.norm_eps, centre=True)
        else:
            t = nl.normalize(pooled, a.norm_eps, centre=False)
        # the last norm's γ/β are folded into the label rows (secptune.arch.fold_norms)
        scores = t @ rows.transpose(0, 1)
        return scores if bias is None else scores + bias
