"""The plaintext model behind the same interface as the secure session.

Used for ``--mode plain``: with ``exact=False`` it runs the secure run's
approximations in float64 (the oracle); with ``exact=True`` the original
non-linearities.  The caller holds the weights — plain mode is not private.
On a GPU (``device="cuda"``) the same float64 code runs there: the weights and
texts move once, every tensor the forward creates is made on the device
(``torch.device`` as the default), and the scores come back to the CPU.
"""

from __future__ import annotations

import time

import torch

from mpc import approx
from rfa.config import SOFTMAX, AttentionConfig
from secptune.checkpoints import load_hf_model
from secptune.devices import batch_to
from secptune.batch import Batch, population_inputs
from secptune.server.prepare import prepare_server_model
from secptune.nonlinear import ExactNonlinear, Nonlinear
from secptune.transformer import Transformer


# sequences per forward: float64 activations of 64 SmolLM2 sequences of ~100 tokens are a few
# hundred MB of CPU memory; a GPU takes 8x more at once and is busy only with large batches
MAX_SEQUENCES = {"cpu": 64, "cuda": 512}


class PlainSession:
    def __init__(
        self,
        model_dir,
        verbalizer: torch.Tensor,
        exact: bool,
        cfg: approx.ApproxConfig,
        attention: AttentionConfig = SOFTMAX,
        model=None,
        device: torch.device | str = "cpu",
    ):
        model = model if model is not None else load_hf_model(model_dir)
        server = prepare_server_model(model, attention)
        self.arch, weights, self.attention = server.arch, server.weights, server.attention
        self.embedding_std = float(weights["emb.word"].std())
        self.device = torch.device(device)
        weights = {name: t.to(self.device) for name, t in weights.items()}
        self.model = Transformer(self.arch, weights, (ExactNonlinear if exact else Nonlinear)(cfg=cfg, attention=self.attention))
        self.head = self.model.label_head(verbalizer.to(self.device))
        self.texts: list[tuple[torch.Tensor, Batch]] = []
        self.forward_log: list[dict] = []

    @property
    def range_warnings(self) -> dict:
        return dict(self.model.nl.monitor.violations)

    @torch.no_grad()
    def load_texts(self, batch: Batch) -> int:
        batch = batch_to(batch, self.device)
        self.texts.append((self.model.embed_tokens(batch.token_onehot, batch.type_onehot), batch))
        return len(self.texts) - 1

    @torch.no_grad()
    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        """Scores of every prompt on the loaded texts, in micro-batches of at most
        MAX_SEQUENCES sequences so a whole CMA-ES population fits in memory."""
        started = time.perf_counter()
        text_embeds, text_batch = self.texts[text_id]
        per_chunk = max(1, MAX_SEQUENCES[self.device.type] // text_embeds.size(0))
        parts = []
        with self.device:  # tensors made inside the forward (masks, RoPE tables) land on the device
            for chunk in prompts.double().to(self.device).split(per_chunk):
                embeds, batch = population_inputs(text_embeds, text_batch, chunk)
                parts.append(self.model.forward(embeds, batch, self.head).cpu())
        out = torch.cat(parts)
        self.forward_log.append(
            {"texts": text_id, "sequences": out.shape[0], "wall_s": time.perf_counter() - started, "bytes": 0, "rounds": 0}
        )
        return out

    def traffic(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass
