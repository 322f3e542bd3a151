"""The one interface every scoring session implements: plain (the oracle and the float
model), exact Hugging Face, and secure (the owner's side of a two-party session).

The tuner and `infer` see only this, so a mode is a session that scores prompts on
loaded texts; nothing above it branches on which one it is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from tqdm import tqdm

from secptune.batch import Batch


@runtime_checkable
class ScoringSession(Protocol):
    """Scores of candidate prompts on text sets loaded once per run."""

    forward_log: list[dict]  # per scores() call: texts, sequences, wall_s, bytes, rounds

    def load_texts(self, batch: Batch) -> int:
        """Load one text set (embedded once: secure sessions share it once); returns its id."""

    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        """Label-word scores [R·B, L] of R prompts [R, P, H] on text set ``text_id`` (B texts)."""

    def traffic(self) -> tuple[int, int]:
        """(bytes, rounds) this session sent so far; (0, 0) without a peer."""

    def close(self) -> None:
        """End the session (secure: tell the server and dealer)."""


def score_batches(session: ScoringSession, batches: list[Batch], range_policy: str | None = None):
    """Owner program for `infer`: each batch's texts scored with its own prompt, on any session
    (``range_policy``: the secure session's, see :meth:`secptune.secure.SecureSession.scores`;
    None keeps its default).  A bar counts the batches: a secure `infer` of 100 SmolLM2 sentences
    runs ~40 minutes on a 2-core CPU and said nothing until it ended."""
    if range_policy is not None and hasattr(session, "range_policy"):
        session.range_policy = range_policy
    out = []
    for batch in tqdm(batches, desc="scoring", unit="batch", disable=len(batches) < 2):
        text_id = session.load_texts(batch)
        out.append(session.scores(text_id, batch.prompt[:1]))
    return torch.cat(out) if out else None
