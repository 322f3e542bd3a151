"""Gradient-based tuning under MPC, as a baseline: full fine-tuning and gradient prompt tuning.

Not the product's path (that is forward-only tuning, :mod:`secptune.tune`): these exist so a
user can measure what backpropagation costs under MPC next to forward-only tuning.  Both run the
one model definition in its ``native`` mode (:class:`secptune.transformer.Nonlinear`) —
CrypTen's own softmax, square roots, reciprocals and sigmoids, which CrypTen's autograd
differentiates — with CrypTen's Beaver products (under fine-tuning the weights change every
step, so fixed weight masks do not apply).  The loss is the cross-entropy over the label words,
computed on shares: the owner's labels stay secret, only the loss is revealed to the owner.

* ``sft``: every weight learns (embeddings, layers, label-word head), Adam;
* ``prompt-grad``: only the prompt embeddings learn, Adam.

The same functions run on plaintext torch tensors (torch's autograd), which is the oracle for
the secure gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpc.tensorops import cat, is_secure

METHODS = ("sft", "prompt-grad")
# Adam's ε: 1e-8 is below 16-bit fixed point's resolution; √v̂ of tiny gradients rounds to 0,
# so ε bounds the step instead (the same ε on plaintext keeps the oracle identical)
ADAM_EPS = 2.0**-6


def trainable_names(weights: dict, method: str) -> list[str]:
    """The model weights a method trains: all of them for ``sft`` except the public RFA
    feature matrices and the prefix keys/values (derived from weights, held fixed); none
    for ``prompt-grad`` (the prompt is trained instead)."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}: one of {', '.join(METHODS)}")
    if method == "prompt-grad":
        return []
    return sorted(n for n in weights if ".rfa." not in n and not n.endswith((".pk", ".pv")))


def cross_entropy(scores, labels_onehot):
    """Mean over the batch of −Σ y·log softmax(scores); labels as one-hot rows."""
    logp = scores.log_softmax(-1) if is_secure(scores) else torch.log_softmax(scores, dim=-1)
    return (logp * labels_onehot).sum() * (-1.0 / scores.size(0))


def _set_requires_grad(t, on: bool):
    if is_secure(t):
        t.requires_grad = on
        return t
    return t.detach().requires_grad_(on)


@dataclass
class Adam:
    """Adam on plaintext or secret-shared tensors (moments kept in the same kind)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = ADAM_EPS
    step_count: int = 0
    moments: dict = field(default_factory=dict)

    def step(self, params: dict, grads: dict) -> dict:
        """New values of ``params`` after one step with ``grads`` (same keys)."""
        self.step_count += 1
        b1, b2 = self.betas
        t = self.step_count
        out = {}
        for name, w in params.items():
            g = grads[name]
            m, v = self.moments.get(name, (g * 0.0, g * 0.0))
            m = m * b1 + g * (1 - b1)
            v = v * b2 + g.square() * (1 - b2)
            self.moments[name] = (m, v)
            denom = (v * (1 / (1 - b2**t))).sqrt() + self.eps
            out[name] = w - m * (self.lr / (1 - b1**t)) * denom.reciprocal()
        return out


def loss_and_grads(model, text, prompt, verbalizer, labels, method: str, phase=None):
    """Loss and gradients of one step (plaintext or secure).

    ``text``: (token one-hot [B, n, V], Batch with pred/penalty, embeddings or None);
    ``prompt`` [1, P, H]; ``verbalizer`` [L, V]; ``labels`` one-hot [B, L].  ``phase(name)``
    (a context manager factory, optional) brackets the forward and backward passes.
    Returns (loss, {name: trained tensor}, {name: gradient}), keyed ``"prompt"`` for
    prompt tuning.  A trained tensor without a gradient is an error: CrypTen's autograd
    drops gradients silently through operations it does not know (e.g. indexing).
    """
    from contextlib import nullcontext
    from dataclasses import replace


    phase = phase or (lambda name: nullcontext())
    token, batch, embeds = text
    names = trainable_names(model.w, method)
    for name in names:
        model.w[name] = _set_requires_grad(model.w[name], True)
    if method == "prompt-grad":
        prompt = _set_requires_grad(prompt, True)
    with phase("forward"):
        if method == "sft" or embeds is None:
            embeds = model.embed_tokens(token)
        head = model.label_head(verbalizer)
        # the prompt repeated per text by concatenation: CrypTen's autograd has no `expand`
        prompts = cat([prompt] * embeds.size(0), dim=0)
        scores = model.forward(embeds, replace(batch, prompt=prompts), head)
        loss = cross_entropy(scores, labels)
    with phase("backward"):
        loss.backward()
    params = {n: model.w[n] for n in names} if names else {"prompt": prompt}
    grads = {n: t.grad for n, t in params.items()}
    for name in names:
        model.w[name] = _set_requires_grad(model.w[name], False)
    missing = sorted(n for n, g in grads.items() if g is None)
    if missing:
        raise RuntimeError(f"no gradient reached {', '.join(missing)}: an operation on its path is not differentiable")
    return loss, params, grads
