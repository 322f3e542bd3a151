"""The plaintext model behind the same interface as the secure session.

Used for ``--mode plain``: with ``exact=False`` it runs the secure run's
approximations in float64 (the oracle); with ``exact=True`` the original
non-linearities.  The caller holds the weights — plain mode is not private.
On a GPU (``device="cuda"``) the same code runs there: the weights and
texts move once, every tensor the forward creates is made on the device
(``torch.device`` as the default), and the scores come back to the CPU.

``dtype``: float64 (the default) is the oracle the secure tests compare with;
float32 runs the *same* approximations at about the speed of the float32 model,
for tuning-accuracy questions that need hundreds of calls.  How close it stays to
the oracle is checked per call by :mod:`secptune.oracle_check` (``--check-oracle``).
"""

from __future__ import annotations

import time

import torch

from mpc import approx
from rfa.config import SOFTMAX, AttentionConfig
from secptune.checkpoints import load_hf_model
from secptune.devices import batch_to, flushed_subnormals
from secptune.batch import Batch, population_inputs
from secptune.errors import InputError
from secptune.server.prepare import ServerModel, prepare_server_model
from secptune.nonlinear import ExactNonlinear, Nonlinear
from secptune.oracle_check import OracleBounds, OracleCheckedSession
from secptune.transformer import Transformer


# sequences per forward: float64 activations of 64 SmolLM2 sequences of ~100 tokens are a few
# hundred MB of CPU memory; a GPU takes 8x more at once and is busy only with large batches
MAX_SEQUENCES = {"cpu": 64, "cuda": 512}
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def resolve_precision(name: str | torch.dtype) -> torch.dtype:
    """``torch.dtype`` for ``--precision``; a clear error for anything else."""
    if isinstance(name, torch.dtype) and name in PRECISIONS.values():
        return name
    if name not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    return PRECISIONS[name]


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
        dtype: torch.dtype | str = torch.float64,
        server: ServerModel | None = None,
    ):
        """``server``: the model as the server prepared it (:func:`prepare_server_model`),
        when the caller has it already — a float32 session and its float64 oracle then share
        one preparation (activation bounds, fitted RFA maps) and so run the same model."""
        if server is None:
            server = prepare_server_model(model if model is not None else load_hf_model(model_dir), attention)
        self.arch, weights, self.attention = server.arch, server.weights, server.attention
        self.server = server
        self.embedding_std = float(weights["emb.word"].std())
        self.device = torch.device(device)
        self.dtype = resolve_precision(dtype)
        # canonical weights are float64; the session computes in its own precision throughout
        weights = {name: t.to(self.device, self.dtype if t.is_floating_point() else None) for name, t in weights.items()}
        self.model = Transformer(self.arch, weights, (ExactNonlinear if exact else Nonlinear)(cfg=cfg, attention=self.attention))
        self.head = self.model.label_head(verbalizer.to(self.device, self.dtype))
        self.texts: list[tuple[torch.Tensor, Batch]] = []
        self.forward_log: list[dict] = []

    @property
    def range_warnings(self) -> dict:
        return dict(self.model.nl.monitor.violations)

    @torch.no_grad()
    def load_texts(self, batch: Batch) -> int:
        batch = batch_to(batch, self.device, self.dtype)
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
        # tensors made inside the forward (masks, RoPE tables) land on the device
        with self.device, flushed_subnormals(self.dtype):
            for chunk in prompts.to(self.device, self.dtype).split(per_chunk):
                embeds, batch = population_inputs(text_embeds, text_batch, chunk)
                parts.append(self.model.forward(embeds, batch, self.head).cpu().double())
        out = torch.cat(parts)
        self.forward_log.append(
            {"texts": text_id, "sequences": out.shape[0], "wall_s": time.perf_counter() - started, "bytes": 0, "rounds": 0}
        )
        return out

    def traffic(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass


def plain_session(
    model_dir,
    verbalizer: torch.Tensor,
    cfg: approx.ApproxConfig,
    attention: AttentionConfig = SOFTMAX,
    model=None,
    device: torch.device | str = "cpu",
    precision: str = "float64",
    check_oracle: int = 0,
    bounds: OracleBounds = OracleBounds(),
):
    """The approximate plain session `infer` and `tune` run: in ``precision``, and with
    ``check_oracle`` = k > 0 a float32 session whose every k-th call the float64 oracle
    scores too (:class:`secptune.oracle_check.OracleCheckedSession`).  Checking float64
    against itself would check nothing, so k > 0 needs float32."""
    dtype = resolve_precision(precision)
    if check_oracle and dtype != torch.float32:
        raise InputError("--check-oracle compares a float32 run with the float64 oracle: add --precision float32")
    if check_oracle < 0:
        raise InputError(f"--check-oracle takes a call interval of at least 1, not {check_oracle}")
    server = prepare_server_model(model if model is not None else load_hf_model(model_dir), attention)
    fast = PlainSession(model_dir, verbalizer, False, cfg, attention, device=device, dtype=dtype, server=server)
    if not check_oracle:
        return fast
    oracle = PlainSession(model_dir, verbalizer, False, cfg, attention, device=device, dtype=torch.float64, server=server)
    return OracleCheckedSession(fast, oracle, every=check_oracle, bounds=bounds)
