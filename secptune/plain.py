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
from secptune.batch import GROUP_ROWS, Batch, cut_rows, length_groups, population_inputs
from secptune.errors import InputError
from secptune.server.prepare import ServerModel, prepare_server_model
from secptune.nonlinear import ExactNonlinear, Nonlinear
from secptune.oracle_check import OracleBounds, OracleCheckedSession
from secptune.transformer import Transformer, prompt_first


# token rows per forward: float64 activations of 6,144 SmolLM2 rows (64 sequences of ~100 tokens)
# are a few hundred MB of CPU memory; a GPU takes 8x more at once and is busy only with large batches
MAX_ROWS = {"cpu": 6144, "cuda": 49152}
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
        self.texts: list[tuple[torch.Tensor, Batch, list]] = []  # (embeddings, layout, length groups)
        self.forward_log: list[dict] = []

    @property
    def range_warnings(self) -> dict:
        return dict(self.model.nl.monitor.violations)

    @torch.no_grad()
    def load_texts(self, batch: Batch) -> int:
        batch = batch_to(batch, self.device, self.dtype)
        embeds = self.model.embed_tokens(batch.token_onehot, batch.type_onehot)
        groups = []
        if self.arch.family == "causal":  # groups of similar length, each cut at its last scored position
            pred = batch.pred_onehot.argmax(-1).cpu()
            for rows in length_groups(pred, GROUP_ROWS[self.device.type]):
                n = int(pred[rows].max()) + 1
                groups.append((rows, embeds[rows.to(self.device), :n], cut_rows(batch, rows.to(self.device), n)))
        else:  # bidirectional: every token reaches the scored one
            groups.append((torch.arange(len(embeds)), embeds, batch))
        self.texts.append((embeds, batch, groups))
        return len(self.texts) - 1

    @torch.no_grad()
    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        """Scores of every prompt on the loaded texts: per length group, as many prompts per
        forward as MAX_ROWS rows allow (a whole CMA-ES population fits in memory); a causal
        model whose prompt comes first runs each prompt once for all groups."""
        started = time.perf_counter()
        embeds, batch, groups = self.texts[text_id]
        R, P, B = prompts.size(0), prompts.size(1), embeds.size(0)
        out = torch.zeros(R, B, self.head[0].size(0), dtype=torch.float64)
        # tensors made inside the forward (masks, RoPE tables) land on the device
        with self.device, flushed_subnormals(self.dtype):
            prompts = prompts.to(self.device, self.dtype)
            kept = self.model.prompt_states(prompts) if prompt_first(self.arch, batch.prompt_start, P, B) else None
            for rows, g_embeds, g_batch in groups:
                b, n = g_embeds.size(0), g_embeds.size(1)
                step = max(1, MAX_ROWS[self.device.type] // (b * (n - P if kept else n)))
                for first in range(0, R, step):
                    chunk = prompts[first : first + step]
                    x, inputs = population_inputs(g_embeds, g_batch, chunk, prompt_once=False)
                    if kept is None:
                        got = self.model.forward(x, inputs, self.head)
                    else:
                        mine = {i: (k[first : first + step], v[first : first + step]) for i, (k, v) in kept.items()}
                        got = self.model.forward_texts(mine, x, inputs, self.head)
                    out[first : first + chunk.size(0), rows] = got.view(chunk.size(0), b, -1).cpu().double()
        out = out.view(R * B, -1)
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
