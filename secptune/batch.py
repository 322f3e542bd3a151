"""The data owner's inputs to one forward pass: plain data types, no MPC.

A :class:`Batch` holds plaintext tensors on the owner's side and secret shares
inside a secure session; nothing here depends on which (this module imports
neither CrypTen nor the protocol layer, so input handling stays light).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# texts per length group (causal models, secptune.batch.length_groups): small on a CPU, where
# padding costs time; large on a GPU, which is busy only with large batches
GROUP_ROWS = {"cpu": 8, "cuda": 64}


class OneHot:
    """One-hot rows [*ids, size] kept as indices (-1: an all-zero row).

    A test set of SmolLM2 inputs as dense float64 one-hots would take tens of GB;
    plaintext runs look rows up by index, secure runs materialise one batch at a
    time just before sharing it (:meth:`double`).
    """

    def __init__(self, ids: torch.Tensor, size: int):
        self.ids, self.size_ = ids.long(), size

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.ids.shape, self.size_))

    def double(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=torch.float64, device=self.ids.device)
        present = self.ids >= 0
        out[present, self.ids[present]] = 1.0
        return out

    def __matmul__(self, table):
        return self.double() @ table


@dataclass
class Batch:
    """The data owner's inputs for one forward pass (plaintext or shares).

    token_onehot  [B, n, V]  one-hot token ids (zero rows at prompt slots)
    prompt        [B, P, H]  prompt embeddings, placed at positions
                             prompt_start .. prompt_start + P - 1 (public layout)
    pred_onehot   [B, n]     1 at the position whose output is scored
    key_penalty   [B, n]     1 at padding positions (encoder only; causal: None)
    type_onehot   [B, n, T]  token types (BERT pairs; None otherwise)
    shared_prompt [R, P, H]  a population's distinct prompts (row r*B + b has prompt r), so a
                             causal model with the prompt first runs each one once (None: no such structure)
    """

    token_onehot: object
    prompt: object
    pred_onehot: object
    key_penalty: object = None
    type_onehot: object = None
    prompt_start: int = 0
    shared_prompt: object = None


def population_inputs(text_embeds, text_batch: Batch, prompts, prompt_once: bool = True):
    """Inputs for R prompts [R, P, H] on B texts: row r*B + b is text b with prompt r.
    ``prompt_once``: keep the R distinct prompts (``shared_prompt``) so a causal model whose
    prompt comes first runs each one once (secptune.transformer.prompt_first)."""
    R, P, H = prompts.size(0), prompts.size(1), prompts.size(2)
    B = text_embeds.size(0)
    penalty = text_batch.key_penalty
    batch = Batch(
        token_onehot=None,
        prompt=prompts.unsqueeze(1).expand(R, B, P, H).reshape(R * B, P, H),
        pred_onehot=text_batch.pred_onehot.repeat(R, 1),
        key_penalty=None if penalty is None else penalty.repeat(R, 1),
        prompt_start=text_batch.prompt_start,
        shared_prompt=prompts if prompt_once else None,
    )
    return text_embeds.repeat(R, 1, 1), batch


def length_groups(pred: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """Text rows in groups of at most ``rows`` of similar length (ordered by scored position
    ``pred`` [B]).  In a causal LM the tokens after the scored position never reach it, so a
    session cuts each group at its longest scored position instead of padding every text to
    the longest of the set (SST-2 with a 50-token prompt: ~2x fewer rows, AG News ~2x)."""
    return list(torch.argsort(pred, stable=True).split(rows))


def cut_rows(batch: Batch, rows: torch.Tensor, n: int) -> Batch:
    """The texts ``rows`` of a loaded batch, each cut to its first ``n`` positions."""
    def take(t):
        return None if t is None else t[rows, :n]
    return Batch(token_onehot=None, prompt=None, pred_onehot=take(batch.pred_onehot), key_penalty=take(batch.key_penalty),
                 type_onehot=take(batch.type_onehot), prompt_start=batch.prompt_start)
