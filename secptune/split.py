"""``--mode privtune``: split learning with noisy token representations (PrivTune's setting,
arXiv 2512.08809, Fig. 1), the comparison mode the attack suite measures next to MPC.

The data owner runs the embeddings and the first K layers (``split_layer``) of the same
:class:`secptune.transformer.Transformer` the other modes run, perturbs every token
representation (:mod:`secptune.privacy.mechanisms`) and sends the rows to the server,
which runs layers K.. and the label head and returns label-word scores.

Where the soft prompt enters.  The prompt is inserted at the split layer, as a layer-K
hidden state of its P slots: the bottom layers run on the text alone (prompt slots left
out, RoPE positions offset by P so the text sits where it would behind the prompt), so a
text's representation does not depend on the prompt and can be released once per run
(``release="once"``); every call sends only the candidate prompts.  With P = 0 and no
noise the two pieces compose to the plain model exactly.  ``release="per-call"`` draws
fresh noise on every call: releases compose, and their average converges on the clean
representation (the attack suite's averaging figure measures how fast).

The server returns scores at every position (it is not told where each text ends);
the owner keeps those at its prediction positions.  The owner object and the server
object share nothing but the :class:`Release` values and prompts handed across, and
their byte counts are what the forward log records (the wire carries the session's
float precision; one round per call, one more per release).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from secptune.batch import Batch
from secptune.errors import InputError
from secptune.nonlinear import ExactNonlinear
from secptune.privacy.mechanisms import MechanismParams, perturb
from secptune.privacy.neighbours import Importance, NeighbourGraph
from secptune.privacy.sampling import NoiseSource
from secptune.server.prepare import ServerModel
from secptune.transformer import Transformer

RELEASES = ("once", "per-call")
MAX_SEQUENCES = 64  # sequences per server forward (CPU memory)


@dataclass
class Release:
    """What the owner sends for one text set: perturbed rows and their public layout."""

    hidden: torch.Tensor  # [B, m, H] rows of the text (prompt slots left out, padding kept)
    positions: torch.Tensor  # [m] their positions in the full sequence (with the prompt)
    prompt_start: int  # where the server inserts the prompt's P rows

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()


def _layer_weights(weights: dict, layers: range, head: bool) -> dict:
    """The weights of ``layers`` (and the embedding table / the label head's)."""
    keep = {f"l{i}." for i in layers}
    out = {k: v for k, v in weights.items() if k[: k.index(".") + 1] in keep}
    out.update({k: v for k, v in weights.items() if k.startswith("emb.")})
    if head:
        out.update({k: v for k, v in weights.items() if k.startswith("head.")})
    return out


def check_split(server: ServerModel, split_layer: int) -> None:
    if server.arch.family != "causal":
        raise InputError("--mode privtune runs causal models (smollm2, tiny-llama); this model is an encoder")
    if not 0 <= split_layer < server.arch.layers:
        raise InputError(f"--split-layer must be in 0..{server.arch.layers - 1} for this model, not {split_layer}")


class BottomModel:
    """The owner's piece: embeddings + layers 0..K-1 (weights of those only)."""

    def __init__(self, server: ServerModel, split_layer: int, dtype: torch.dtype):
        check_split(server, split_layer)
        self.K, self.dtype = split_layer, dtype
        w = {k: v.to(dtype) for k, v in _layer_weights(server.weights, range(split_layer), head=False).items()}
        self.model = Transformer(server.arch, w, ExactNonlinear())

    @torch.no_grad()
    def of_embeds(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = embeds.to(self.dtype)
        return h if self.K == 0 else self.model.causal(h, layers=range(self.K), positions=positions)

    def of_ids(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.of_embeds(self.model.w["emb.word"][ids], positions)


class SplitServer:
    """The cloud's piece: layers K.. and the label head, and whatever it was sent."""

    def __init__(self, server: ServerModel, verbalizer: torch.Tensor, split_layer: int, dtype: torch.dtype,
                 recorder=None):
        check_split(server, split_layer)
        self.K, self.dtype, self.recorder = split_layer, dtype, recorder
        w = {k: v.to(dtype) for k, v in _layer_weights(server.weights, range(split_layer, server.arch.layers), True).items()}
        self.model = Transformer(server.arch, w, ExactNonlinear())
        self.head = self.model.label_head(verbalizer.to(dtype))
        self.texts: list[Release] = []

    def receive(self, release: Release, text_id: int | None = None) -> int:
        """Store a release (a new text set, or fresh noise for ``text_id``); returns its id."""
        if text_id is None:
            self.texts.append(release)
            text_id = len(self.texts) - 1
        else:
            self.texts[text_id] = release
        if self.recorder is not None:
            self.recorder.server_received(text_id, release)
        return text_id

    @torch.no_grad()
    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        """Label-word scores [R·B, n, L] at every position, for R prompts [R, P, H]."""
        rel = self.texts[text_id]
        B, s = rel.hidden.size(0), rel.prompt_start
        per_chunk = max(1, MAX_SEQUENCES // B)
        out = []
        for chunk in prompts.to(self.dtype).split(per_chunk):
            R = chunk.size(0)
            h = rel.hidden.to(self.dtype).repeat(R, 1, 1)
            p = chunk.unsqueeze(1).expand(R, B, *chunk.shape[1:]).reshape(R * B, *chunk.shape[1:])
            h = torch.cat([h[:, :s], p, h[:, s:]], dim=1)
            h = self.model.causal(h, layers=range(self.K, self.model.arch.layers))
            out.append(self.model.score(h, self.head))
        return torch.cat(out)


class SplitOwner:
    """The owner's piece: its texts in the clear, the bottom model and the mechanism."""

    def __init__(self, bottom: BottomModel, params: MechanismParams, source: NoiseSource,
                 graph: NeighbourGraph | None = None, importance: Importance | None = None):
        if params.noise == "privtune" and (graph is None or importance is None):
            raise ValueError("the privtune mechanism needs the neighbour graph and the importance table")
        self.bottom, self.params, self.source = bottom, params, source
        self.graph, self.importance = graph, importance

    def clean(self, ids: torch.Tensor, positions: torch.Tensor) -> dict:
        """Everything the owner keeps per text set: rows [B, m, H] and, for privtune,
        each row's target representation and importance (the mechanism's inputs)."""
        state = {"ids": ids, "positions": positions, "h": self.bottom.of_ids(ids, positions)}
        if self.params.noise == "privtune":
            targets = self.graph.targets(ids, self.params.hops)
            state["target"] = self.bottom.of_embeds(targets, positions)
            state["importance"] = torch.stack([self.importance.of(row) for row in ids.tolist()])
        return state

    def release(self, state: dict, prompt_start: int) -> Release:
        noisy = perturb(state["h"], self.params, self.source, state.get("target"), state.get("importance"))
        return Release(noisy.to(self.bottom.dtype), state["positions"], prompt_start)


def layout(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(token ids [B, m] without the prompt slots, their positions [m], prompt length P)."""
    ids = batch.token_onehot.ids
    slots = (ids < 0).all(0)
    if (ids[:, slots] >= 0).any() or ((ids < 0) & ~slots).any():
        raise InputError("the texts of a batch disagree on where the prompt goes")
    keep = ~slots
    return ids[:, keep], torch.arange(ids.size(1))[keep], int(slots.sum())


class SplitSession:
    """The owner's :class:`secptune.scoring.ScoringSession` of ``--mode privtune``."""

    def __init__(self, owner: SplitOwner, server: SplitServer, release: str = "once", recorder=None):
        if release not in RELEASES:
            raise InputError(f"--release must be one of {', '.join(RELEASES)}, not {release!r}")
        self.owner, self.server, self.release_mode, self.recorder = owner, server, release, recorder
        self.embedding_std = float(owner.bottom.model.w["emb.word"].double().std())
        self.texts: list[tuple[dict, Batch, int]] = []  # owner state, layout, server's id
        self.forward_log: list[dict] = []
        self.sent_bytes = self.received_bytes = self.rounds = 0
        self._unlogged = 0  # release bytes not yet attributed to a call
        self._scored: set[int] = set()  # text sets whose current release was scored already

    def _send(self, state: dict, batch: Batch, text_id: int | None) -> int:
        rel = self.owner.release(state, batch.prompt_start)
        self.sent_bytes += rel.nbytes
        self.rounds += 1
        self._unlogged += rel.nbytes
        return self.server.receive(rel, text_id)

    def load_texts(self, batch: Batch) -> int:
        ids, positions, _ = layout(batch)
        state = self.owner.clean(ids, positions)
        server_id = self._send(state, batch, None)
        if self.recorder is not None:
            self.recorder.owner_loaded(server_id, batch, ids, positions)
        self.texts.append((state, batch, server_id))
        return len(self.texts) - 1

    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        state, batch, server_id = self.texts[text_id]
        if self.release_mode == "per-call" and text_id in self._scored:
            self._send(state, batch, server_id)
        all_scores = self.server.scores(server_id, prompts)
        prompt_bytes = prompts.numel() * all_scores.element_size()
        reply = all_scores.numel() * all_scores.element_size()
        self.sent_bytes += prompt_bytes
        self.received_bytes += reply
        self.rounds += 1
        pred = batch.pred_onehot.argmax(-1).repeat(prompts.size(0))
        out = all_scores[torch.arange(len(pred)), pred].double()
        self.forward_log.append({
            "texts": text_id, "sequences": out.shape[0], "wall_s": time.perf_counter() - started,
            "bytes": prompt_bytes + self._unlogged, "rounds": 1 + (self._unlogged > 0),
            "server_bytes": reply,
        })
        self._unlogged = 0
        self._scored.add(text_id)
        return out

    def traffic(self) -> tuple[int, int]:
        return self.sent_bytes, self.rounds

    def close(self) -> None:
        pass
