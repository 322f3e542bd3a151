"""``--mode guarded``: GuardedTuning (Shi, Ouyang & Wang, "Navigating the Designs of
Privacy-Preserving Fine-tuning for Large Language Models", arXiv 2501.04323) as a
comparison mode beside the secure mode and PrivTune's noisy split.

The model is cut in three: the data owner (client) holds the **input adapter** (the
embedding table and the first ``in_layers`` Transformer layers) and the **output adapter**
(the last ``out_layers`` layers and the label-word rows of the head); the model server
holds the **backbone** in between, frozen.  The adapters are tuned in full (every weight
of those layers, no LoRA), by gradient descent on the label-word cross entropy.

Variants (docs/privacy.md states the reading of the paper behind each):

* ``online`` — split learning: activations go up, the backbone's output comes down, the
  gradient with respect to that output goes up, the gradient with respect to the
  backbone's input comes down; both adapters are tuned.  The input adapter is trained
  with the distance-correlation regulariser (:func:`distance_correlation`, weight ``dcor``).
* ``gradfree`` — only the output adapter is tuned, so no gradient ever crosses (what
  gradient-matching reconstruction needs is never sent).  Before tuning, the *client*
  hardens its input adapter locally, on its own training texts and with no traffic:
  it minimises the distance correlation between token embeddings and the adapter's
  output (weight ``dcor``) plus the relative squared drift from the pretrained adapter's
  output (so the backbone still understands it).  Each text's activations are then sent
  once; the client keeps the backbone's answer.
* ``offline`` — offsite tuning: the server sends an emulator once (the backbone with
  every ``keep``-th layer kept, the rest dropped, no distillation); the client tunes both
  adapters against it locally, nothing about its data crosses while tuning.  Scoring
  (dev, test, deployment) runs the tuned adapters around the real backbone, split.

Every tensor that crosses goes through :func:`quantise` at ``bits`` (32: float32 as is);
bytes are counted after quantisation.  The owner's and the server's objects share only
what is handed across (:class:`Wire`), as in :mod:`secptune.split`.
"""

from __future__ import annotations

import math
import time

import torch

from secptune.errors import InputError
from secptune.nonlinear import ExactNonlinear
from secptune.server.prepare import ServerModel
from secptune.split import Release, _layer_weights
from secptune.transformer import Transformer

VARIANTS = ("online", "gradfree", "offline")
FLOAT_BITS = 32
SCALE_BYTES = 8  # per quantised row: its offset and step, float32 each


# -- what crosses ---------------------------------------------------------------
def quantise(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """``x`` as the receiver gets it after ``bits``-bit uniform quantisation per row (last
    dimension: offset = the row's minimum, step = range / (2^bits − 1), round to nearest),
    and the bytes on the wire (codes packed, plus offset and step per row).  Deterministic:
    no randomness, so nothing here needs the AES-CTR stream.  32 bits: no quantisation, the
    session's float precision as is (float32 by default, 4 bytes a value).
    Error bound: |x − x̂| ≤ step / 2 per element."""
    x = x.detach()
    if bits >= FLOAT_BITS:
        return x.clone(), x.numel() * x.element_size()
    x = x.float()
    if not 1 <= bits <= 16:
        raise InputError(f"--quant-bits must be 1..16 or 32, not {bits}")
    rows = x.reshape(-1, x.size(-1) if x.dim() else 1)
    lo = rows.min(-1, keepdim=True).values
    span = rows.max(-1, keepdim=True).values - lo
    step = torch.where(span > 0, span / (2**bits - 1), torch.ones_like(span))
    codes = torch.round((rows - lo) / step).clamp_(0, 2**bits - 1)
    nbytes = rows.size(0) * (math.ceil(rows.size(1) * bits / 8) + SCALE_BYTES)
    return (codes * step + lo).reshape(x.shape), nbytes


class Wire:
    """Counts what crosses between the owner and the server, per direction, after quantisation."""

    def __init__(self, bits: int):
        if not (bits == FLOAT_BITS or 1 <= bits <= 16):
            raise InputError(f"--quant-bits must be 1..16 or 32, not {bits}")
        self.bits = bits
        self.up = self.down = self.rounds = 0

    def send_up(self, x: torch.Tensor) -> torch.Tensor:
        out, n = quantise(x, self.bits)
        self.up += n
        return out

    def send_down(self, x: torch.Tensor) -> torch.Tensor:
        out, n = quantise(x, self.bits)
        self.down += n
        return out

    def mark(self) -> tuple[int, int, int]:
        return self.up, self.down, self.rounds


# -- the regulariser ------------------------------------------------------------
def _doubly_centred(x: torch.Tensor) -> torch.Tensor:
    sq = x.square().sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    d2 = d2.masked_fill(torch.eye(len(x), dtype=torch.bool), 0)
    # sqrt with a zero gradient where the distance is 0 (the diagonal, repeated rows)
    d = torch.where(d2 > 1e-12, d2.clamp_min(1e-12).sqrt(), torch.zeros_like(d2))
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (Székely, Rizzo & Bakirov 2007) between the rows of ``x``
    [n, p] and ``z`` [n, q]: 0 iff independent (in the limit), 1 for a similarity map.
    Differentiable; O(n²) memory (NoPeek's regulariser, Vepakomma et al. 2020, as
    GuardedTuning uses it between the client's inputs and the activations it sends)."""
    a, b = _doubly_centred(x.double()), _doubly_centred(z.double())
    dcov2 = (a * b).mean().clamp_min(0)
    denom = ((a * a).mean() * (b * b).mean()).sqrt()
    if float(denom.detach()) == 0.0:
        return dcov2 * 0
    return (dcov2 / denom).clamp_min(1e-30).sqrt()


# -- the three pieces -----------------------------------------------------------
def check_cut(server: ServerModel, in_layers: int, out_layers: int) -> None:
    L = server.arch.layers
    if server.arch.family != "causal":
        raise InputError("--mode guarded runs causal models (smollm2, tiny-llama); this model is an encoder")
    if in_layers < 1 or out_layers < 0 or in_layers + out_layers >= L:
        raise InputError(f"--in-layers (>= 1) plus --out-layers (>= 0) must leave the server at least one of this "
                         f"model's {L} layers, not {in_layers} + {out_layers}")


def default_out_layers(layers: int) -> int:
    """One output-adapter layer where the model has layers to spare (tiny-llama has 2: none)."""
    return 1 if layers > 2 else 0


class Piece:
    """Layers ``layers`` of the model (+ the embedding table / the label rows where asked),
    as its own :class:`Transformer` on its own copies of those weights."""

    def __init__(self, server: ServerModel, layers: list[int], dtype: torch.dtype, trainable: bool,
                 embed: bool = False, verbalizer: torch.Tensor | None = None):
        self.layers = list(layers)
        w = _layer_weights(server.weights, range(0), head=False) if embed else {}
        keep = {f"l{i}." for i in self.layers}
        w.update({k: v for k, v in server.weights.items() if k[: k.index(".") + 1] in keep})
        self.w = {k: v.to(dtype).clone().requires_grad_(trainable) for k, v in w.items()}
        self.model = Transformer(server.arch, self.w, ExactNonlinear())
        self.head = None
        if verbalizer is not None:
            full = server.weights["head.out"].to(dtype)
            rows = verbalizer.to(dtype) @ full
            self.head = rows.clone().requires_grad_(trainable)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.w.values()) + ([self.head] if self.head is not None else [])

    def run(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.causal(h, layers=self.layers) if self.layers else h

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.w["emb.word"][ids]

    def score(self, h: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Label-word scores [B, L] at each row's prediction position."""
        pooled = (self.run(h) * pred.to(h.dtype).unsqueeze(-1)).sum(1)
        return self.model.score(pooled, (self.head, None))

    def state(self) -> dict:
        out = {k: v.detach().clone() for k, v in self.w.items()}
        if self.head is not None:
            out["head.rows"] = self.head.detach().clone()
        return out


def emulator_layers(layers: list[int], keep: int) -> list[int]:
    """Offsite tuning's uniform layer drop: every ``keep``-th backbone layer (first one kept)."""
    return layers[::keep] if layers else []


class GuardedServer:
    """The model server's piece: the frozen backbone, and whatever it was sent."""

    def __init__(self, server: ServerModel, in_layers: int, out_layers: int, dtype: torch.dtype, recorder=None):
        check_cut(server, in_layers, out_layers)
        self.backbone = Piece(server, list(range(in_layers, server.arch.layers - out_layers)), dtype, False)
        self.dtype, self.recorder = dtype, recorder
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, text_id: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        """Activations [B, n, H] arrive; the backbone's output goes back (kept for a backward)."""
        if self.recorder is not None:
            self.recorder.server_received(text_id, Release(h, torch.arange(h.size(1)), 0))
        with torch.set_grad_enabled(train):
            x = h.to(self.dtype).requires_grad_(train)
            y = self.backbone.run(x)
        if train:
            self._pending[text_id] = (x, y)
        return y.detach()

    def backward(self, text_id: int, grad: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. its last output arrives; the one w.r.t. its input goes back."""
        if self.recorder is not None:
            self.recorder.server_received_grad(text_id, grad)
        x, y = self._pending.pop(text_id)
        (g,) = torch.autograd.grad(y, x, grad.to(y.dtype))
        return g

    def emulator(self, keep: int) -> dict:
        """Offline: the compressed backbone handed to the client (layer drop)."""
        layers = emulator_layers(self.backbone.layers, keep)
        prefix = {f"l{i}." for i in layers}
        return {"layers": layers, "weights": {k: v.detach() for k, v in self.backbone.w.items()
                                              if k[: k.index(".") + 1] in prefix}}


class GuardedClient:
    """The data owner's pieces: the input and output adapters, its texts and labels."""

    def __init__(self, server: ServerModel, verbalizer: torch.Tensor, in_layers: int, out_layers: int,
                 dtype: torch.dtype):
        check_cut(server, in_layers, out_layers)
        L = server.arch.layers
        self.inp = Piece(server, list(range(in_layers)), dtype, True, embed=True)
        self.out = Piece(server, list(range(L - out_layers, L)), dtype, True, verbalizer=verbalizer)
        self.arch, self.dtype = server.arch, dtype
        self.emulator: Piece | None = None

    def activations(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings, the input adapter's output) [B, n, H] each."""
        e = self.inp.embed(ids)
        return e, self.inp.run(e)

    def load_emulator(self, server: ServerModel, emulator: dict, wire: Wire) -> None:
        piece = Piece(server, [], self.dtype, False)
        piece.layers = emulator["layers"]
        piece.w.update({k: wire.send_down(v).to(self.dtype) for k, v in emulator["weights"].items()})
        self.emulator = piece


def text_rows(batch_ids: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mask [B, n] of each text's rows up to its prediction position (padding excluded)."""
    last = pred.argmax(-1)
    return torch.arange(batch_ids.size(1))[None, :] <= last[:, None]


def cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(scores.double(), labels)


class GuardedSession:
    """One GuardedTuning run between a :class:`GuardedClient` and a :class:`GuardedServer`.

    ``step`` is one tuning call (a mini-batch's forward and, where the variant sends
    gradients, backward); ``scores`` is a forward through the real backbone (dev, test,
    deployment).  ``forward_log`` holds one entry per tuning call in the shape the other
    modes' reports use (bytes the owner sent, bytes the server sent, rounds, seconds)."""

    def __init__(self, client: GuardedClient, server: GuardedServer, variant: str, bits: int, dcor: float,
                 lr: float, recorder=None, server_model: ServerModel | None = None, keep: int = 2):
        if variant not in VARIANTS:
            raise InputError(f"--variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        if dcor < 0:
            raise InputError(f"--dcor must be 0 or more, not {dcor}")
        self.client, self.server, self.variant, self.dcor = client, server, variant, dcor
        self.wire, self.recorder = Wire(bits), recorder
        params = client.out.parameters() + ([] if variant == "gradfree" else client.inp.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.forward_log: list[dict] = []
        self.texts: list[tuple[torch.Tensor, torch.Tensor, object]] = []  # ids, pred, batch
        self._cached: dict[int, torch.Tensor] = {}  # gradfree: the backbone's answer per text set
        self._seen: set[int] = set()
        self._pending_log = (0, 0, 0)
        if variant == "offline":
            if server_model is None:
                raise ValueError("the offline variant needs the server model to build the emulator")
            client.load_emulator(server_model, server.emulator(keep), self.wire)
            self.wire.rounds += 1
            self._pending_log = (0, self.wire.down, 1)  # the emulator's download, billed to the first call

    # -- texts and the wire ------------------------------------------------------
    def load_texts(self, batch) -> int:
        ids = batch.token_onehot.ids
        if (ids < 0).any():
            raise InputError("--mode guarded tunes adapters, not a prompt: run it with --prompt-len 0")
        self.texts.append((ids, batch.pred_onehot, batch))
        return len(self.texts) - 1

    def _up(self, text_id: int, z: torch.Tensor, train: bool) -> torch.Tensor:
        first = text_id not in self._seen
        self._seen.add(text_id)
        y = self.server.forward(text_id, self.wire.send_up(z), train)
        if first and self.recorder is not None:
            ids, _, batch = self.texts[text_id]
            self.recorder.owner_loaded(text_id, batch, ids, torch.arange(ids.size(1)))
        self.wire.rounds += 1
        return self.wire.send_down(y).to(self.client.dtype)

    def _regulariser(self, e: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.dcor == 0:
            return torch.zeros((), dtype=torch.float64)
        return self.dcor * distance_correlation(e[mask], z[mask])

    # -- one tuning call ---------------------------------------------------------
    def step(self, text_id: int, labels: torch.Tensor) -> float:
        started, before = time.perf_counter(), self.wire.mark()
        ids, pred, _ = self.texts[text_id]
        self.optimizer.zero_grad()
        loss = getattr(self, f"_step_{self.variant}")(text_id, ids, pred, labels)
        self.optimizer.step()
        after = self.wire.mark()
        extra = self._pending_log
        self._pending_log = (0, 0, 0)
        self.forward_log.append({
            "texts": text_id, "sequences": ids.size(0), "wall_s": time.perf_counter() - started,
            "bytes": after[0] - before[0] + extra[0], "server_bytes": after[1] - before[1] + extra[1],
            "rounds": after[2] - before[2] + extra[2],
        })
        return loss

    def _step_online(self, text_id, ids, pred, labels) -> float:
        e, z = self.client.activations(ids)
        v = self._up(text_id, z, train=True).requires_grad_(True)
        task = cross_entropy(self.client.out.score(v, pred), labels)
        task.backward()
        g_in = self.server.backward(text_id, self.wire.send_up(v.grad))
        self.wire.rounds += 1
        g_z = self.wire.send_down(g_in).to(z.dtype)
        reg = self._regulariser(e, z, text_rows(ids, pred))
        if reg.requires_grad:
            torch.autograd.backward([z, reg], [g_z, torch.ones_like(reg)])
        else:
            z.backward(g_z)
        return float(task.detach()) + float(reg.detach())

    def _step_gradfree(self, text_id, ids, pred, labels) -> float:
        if text_id not in self._cached:
            with torch.no_grad():
                _, z = self.client.activations(ids)
            self._cached[text_id] = self._up(text_id, z, train=False)
        loss = cross_entropy(self.client.out.score(self._cached[text_id], pred), labels)
        loss.backward()
        return float(loss.detach())

    def _step_offline(self, text_id, ids, pred, labels) -> float:
        e, z = self.client.activations(ids)
        scores = self.client.out.score(self.client.emulator.run(z), pred)
        task = cross_entropy(scores, labels)
        reg = self._regulariser(e, z, text_rows(ids, pred))
        (task + reg).backward()
        return float(task.detach()) + float(reg.detach())

    # -- forward through the real backbone -------------------------------------------
    @torch.no_grad()
    def scores(self, text_id: int) -> torch.Tensor:
        ids, pred, _ = self.texts[text_id]
        if self.variant == "gradfree" and text_id in self._cached:
            v = self._cached[text_id]
        else:
            _, z = self.client.activations(ids)
            v = self._up(text_id, z, train=False)
            if self.variant == "gradfree":
                self._cached[text_id] = v
        return self.client.out.score(v, pred).double()

    def traffic(self) -> tuple[int, int, int]:
        return self.wire.mark()


def harden_input_adapter(client: GuardedClient, batches: list, dcor: float, steps: int, lr: float,
                         progress=None) -> list[float]:
    """Gradfree's hardening, by the client on its own texts, before any traffic: minimise
    mean‖A'(x) − A(x)‖² / mean‖A(x)‖² + dcor · dCor(x, A'(x)) over its input adapter A'
    (A: the pretrained adapter).  Returns the loss per step."""
    if dcor == 0 or steps == 0:
        return []
    with torch.no_grad():
        targets = [client.activations(ids)[1] for ids, _ in batches]
    opt = torch.optim.Adam(client.inp.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        (ids, pred), target = batches[s % len(batches)], targets[s % len(batches)]
        mask = text_rows(ids, pred)
        e, z = client.activations(ids)
        drift = (z - target)[mask].square().mean() / target[mask].square().mean()
        loss = drift.double() + dcor * distance_correlation(e[mask], z[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    return losses
