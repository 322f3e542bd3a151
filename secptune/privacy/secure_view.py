"""The secure mode's server view (``--mode secure --record-view N``), tapped at the transport.

What the server process learns in a secure run is its own state (its shares, drawn from
streams it keys or shares) plus what arrives over :mod:`mpc.transport`: from the owner,
commands and the owner's halves of every opening (the server adds its own half: the
*opened* value, masked by the dealer's one-time masks); from the dealer, nothing after the
start-up (the server draws its share of every dealt value from its own dealer stream; the
owner gets the other half).  :class:`ServerViewRecorder` sits in the server process:

* a transport tap (:func:`mpc.transport.tapped`) counts every arrival (messages and bytes
  per source and per command) and keeps, for the first ``limit`` texts (items), the
  per-token slices of the arrivals that have the text set's token axis;
* a session instrument (entered around every command) tells it which command runs.

Per item it stores, per token (``[m, W]``, W ≤ ``cap`` ring elements):

* ``share_embed``: the server's share of the text's input-embedding rows (the secure
  one-hot product's output, after ``texts``) — its share of the value nearest the input
  in the model's space;
* ``share_input@E``: the server's share of the text's one-hot input rows, read as fixed
  point and multiplied by the server's own embedding table (V → H: a function of its
  view, stored instead of the V-wide rows, which would take 49,152 × 8 bytes per SmolLM2
  token);
* ``texts_recv{k}``: the k-th token-axis arrival of the ``texts`` command (the opening of
  the one-hot rows minus a dealer mask; V-wide, stored ``@E`` like the input share);
* ``forward_recv{k}``, k < ``openings``: the first token-axis arrivals of the text set's
  first ``forward``, candidate 0 (the layer-0 input — input embedding + prompt — minus a
  mask, then the first norm's openings): the part of a forward nearest the input; later
  openings are functions of these and of more fresh masks.

Openings are stored as opened (the owner's half plus the server's), i.e. as the server
learns them.  Nothing is re-derived from plaintext.  The owner's side
(:class:`OwnerTruthRecorder`) writes ``truth.pt`` in the split mode's format; items are
numbered in the order the text sets were loaded, so both sides agree without talking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from secptune.errors import InputError
from secptune.privacy.view import FORMAT, HEADER, TRUTH, VIEW, truth_item, view_dir
from secptune.split_job import text_token_counter

OPENINGS = 3  # token-axis arrivals kept per text set's first forward
WIDTH_CAP = 1024  # ring elements per token and channel (SmolLM2's H = 576 fits whole)
ITEM_CAP = 2 << 20  # bytes per item on disk: channels past it are dropped (and counted)
SCALE_BITS = 16  # CrypTen's fixed-point precision (mpc.session.SessionSpec)
ROLE_OF_RANK = {0: "owner", 1: "server", 2: "dealer"}


@dataclass
class SecureViewSpec:
    """What the server's recorder keeps (picklable: it travels to the server process)."""

    run_dir: str
    limit: int
    public: dict
    openings: int = OPENINGS
    cap: int = WIDTH_CAP


def decode(ring: torch.Tensor, bits: int = SCALE_BITS) -> torch.Tensor:
    """Ring elements read as CrypTen's fixed point (signed, / 2^bits), float64."""
    return ring.long().double() / float(1 << bits)


def token_rows(tensor: torch.Tensor, rows: int, n: int) -> torch.Tensor | None:
    """``tensor`` as [rows, n, W] when it has the text set's token axes (``rows`` sequences
    of ``n`` tokens, adjacent, first such pair), else None."""
    shape = tuple(tensor.shape)
    for i in range(len(shape) - 1):
        if shape[i] == rows and shape[i + 1] == n:
            return tensor.movedim((i, i + 1), (0, 1)).reshape(rows, n, -1)
    return None


def batch_digest(batch) -> str:
    """A text set's identity on the owner's side (its token ids and layout)."""
    h = hashlib.sha256(batch.token_onehot.ids.numpy().tobytes())
    h.update(str((tuple(batch.token_onehot.ids.shape), batch.prompt_start)).encode())
    return h.hexdigest()


@dataclass
class _Capture:
    text_set: int
    rows: int  # sequences in the arrivals (B, or R·B in a forward)
    n: int
    prefix: str
    left: int  # token-axis arrivals still to keep
    index: int = 0


@dataclass
class _Traffic:
    """Arrivals per source role: messages and bytes (reduction parts included)."""

    messages: dict = field(default_factory=lambda: {"owner": 0, "dealer": 0})
    bytes: dict = field(default_factory=lambda: {"owner": 0, "dealer": 0})

    def add(self, role: str, nbytes: int) -> None:
        self.messages[role] += 1
        self.bytes[role] += nbytes


class ServerViewRecorder:
    """The server process's recorder (see the module docstring).  ``table``: the server's
    own input-embedding table [V, H] (plaintext: it is the server's), for the V-wide rows."""

    def __init__(self, spec: SecureViewSpec, table: torch.Tensor):
        self.spec, self.table = spec, table.float()
        self.session = None
        self.items: list[dict] = []
        self.sets: dict[int, dict] = {}  # text set -> {"B", "n", "rows": [(row, item)], "forwarded"}
        self.total = _Traffic()
        self.commands: list[dict] = []  # per command: op and its arrivals
        self.dropped = 0  # channels left out by the per-item byte cap
        self._capture: _Capture | None = None
        self._current: _Traffic | None = None
        self.channels: dict[str, dict] = {}  # name -> description (kind, shape, stored width)

    # -- the transport tap --------------------------------------------------------
    def tap(self, kind: str, src: int, group: int, tensor: torch.Tensor) -> None:
        role = ROLE_OF_RANK.get(src, "several")
        if kind != "opened" and role in self.total.bytes:
            nbytes = tensor.numel() * tensor.element_size()
            self.total.add(role, nbytes)
            if self._current is not None:
                self._current.add(role, nbytes)
        cap = self._capture
        if cap is None or cap.left <= 0 or kind == "reduce_part" or tensor.dtype.is_floating_point:
            return
        rows = token_rows(tensor, cap.rows, cap.n)
        if rows is None:
            return
        name = f"{cap.prefix}_recv{cap.index}"
        cap.index += 1
        cap.left -= 1
        self._keep(name, kind, tuple(tensor.shape), cap.text_set, rows)

    # -- the session instrument -------------------------------------------------------
    def instrument(self, cmd):
        @contextlib.contextmanager
        def around():
            entry = {"op": cmd.op, **{k: v for k, v in vars(cmd).items() if isinstance(v, int)}}
            self._current = _Traffic()
            self._capture = self._plan(cmd)
            try:
                yield
            finally:
                if cmd.op == "texts" and self._capture is not None:
                    self._keep_shares(self._capture.text_set)
                entry.update(messages=self._current.messages, bytes=self._current.bytes)
                self.commands.append(entry)
                self._capture, self._current = None, None

        return around()

    def _plan(self, cmd) -> _Capture | None:
        if cmd.op == "texts":
            set_id = len(self.session.texts) if self.session is not None else len(self.sets)
            rows = []
            for b in range(cmd.B):
                if len(self.items) >= self.spec.limit:
                    break
                rows.append((b, len(self.items)))
                self.items.append({"channels": {}, "positions": torch.arange(cmd.n), "prompt_start": cmd.start,
                                   "text_set": set_id, "row": b, "bytes": 0})
            self.sets[set_id] = {"B": cmd.B, "n": cmd.n, "rows": rows, "forwarded": False}
            return _Capture(set_id, cmd.B, cmd.n, "texts", self.spec.openings) if rows else None
        if cmd.op == "forward":
            meta = self.sets.get(cmd.texts)
            if meta is None or not meta["rows"] or meta["forwarded"]:
                return None
            meta["forwarded"] = True  # the first forward of a text set (later ones: fresh masks, same kind)
            return _Capture(cmd.texts, cmd.R * meta["B"], meta["n"], "forward", self.spec.openings)
        return None

    def _keep_shares(self, set_id: int) -> None:
        """After ``texts``: the server's own shares of the text set's inputs and embeddings."""
        text = self.session.texts[-1]
        meta = self.sets[set_id]
        for name, shared in (("share_embed", text.embeds), ("share_input", text.token)):
            ring = shared.share if hasattr(shared, "share") else None
            if ring is None:
                continue
            rows = token_rows(ring, meta["B"], meta["n"])
            if rows is not None:
                self._keep(name, "share", tuple(ring.shape), set_id, rows)

    def _keep(self, name: str, kind: str, shape: tuple, set_id: int, rows: torch.Tensor) -> None:
        wide = rows.size(-1) == self.table.size(0)  # V-wide: stored through the server's table
        label = f"{name}@E" if wide else name
        for b, item in self.sets[set_id]["rows"]:
            if wide:
                value = decode(rows[b]).float() @ self.table
            else:
                value = rows[b, :, : self.spec.cap].long().clone()
            it = self.items[item]
            size = value.numel() * value.element_size()
            if it["bytes"] + size > ITEM_CAP:
                self.dropped += 1
                continue
            it["bytes"] += size
            it["channels"][label] = value
        self.channels.setdefault(label, {"kind": kind, "shape": list(shape), "width": int(rows.size(-1)),
                                         "stored": "float @ table" if wide else f"ring int64, first {self.spec.cap}",
                                         "scale_bits": 0 if wide else SCALE_BITS})

    # -- output -----------------------------------------------------------------
    def summary(self) -> dict:
        return {"arrivals": asdict(self.total), "commands": self.commands, "dropped_channels": self.dropped}

    def write(self) -> Path:
        out = view_dir(self.spec.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        items = [{"channels": it["channels"], "positions": it["positions"], "prompt_start": it["prompt_start"]}
                 for it in self.items]
        header = {"format": FORMAT, **self.spec.public, "mode": "secure", "items": len(items),
                  "releases": [1] * len(items), "channels": self.channels, "openings": self.spec.openings,
                  "width_cap": self.spec.cap, "item_cap_bytes": ITEM_CAP,
                  "bytes_on_disk": sum(it["bytes"] for it in self.items), **self.summary()}
        torch.save({"header": header, "items": items}, out / VIEW)
        (out / HEADER).write_text(json.dumps(header, indent=1))
        return out


# -- the owner's side ------------------------------------------------------------------
def describe_batches(pairs, count) -> dict:
    """digest -> [(label, text, private tokens)] per row, for (batch, examples) pairs;
    ``count(text)``: the text's own token count."""
    out = {}
    for batch, examples in pairs:
        out[batch_digest(batch)] = [(None if e.label is None else int(e.label), e.text, count(e.text)) for e in examples]
    return out


class OwnerTruthRecorder:
    """The owner's truth for the first ``limit`` rows of the text sets it loads, in order."""

    def __init__(self, run_dir: str, limit: int, described: dict):
        self.run_dir, self.limit, self.described = run_dir, limit, described
        self.items: list[dict] = []

    def loaded(self, batch) -> None:
        rows = self.described.get(batch_digest(batch))
        ids = batch.token_onehot.ids
        slots = int((ids < 0).all(0).sum())  # prompt slots: the text follows them
        pred = batch.pred_onehot.argmax(-1)
        for b in range(ids.size(0)):
            if len(self.items) >= self.limit:
                return
            label, text, private = rows[b] if rows else (None, None, int(pred[b]) + 1)
            self.items.append(truth_item(ids[b], int(pred[b]) + 1, label, text, batch.prompt_start + slots, private))

    def watch(self, session) -> None:
        """Record every text set ``session`` (the owner's SecureSession) loads."""
        load = session.load_texts

        def load_texts(batch):
            text_id = load(batch)
            self.loaded(batch)
            return text_id

        session.load_texts = load_texts

    def write(self) -> Path:
        out = view_dir(self.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"items": self.items}, out / TRUTH)
        return out


def secure_header(model: str, task: str | None, data: str | None, template: str, words: list[str], prompt_len: int,
                  attention: str, batch_size: int, pad_bucket: int) -> dict:
    """What the server knows about a secure run's layout (all public), for the view's header."""
    return {"mode": "secure", "model": model, "task": task, "data": data, "template": template, "verbalizer": words,
            "prompt_len": prompt_len, "attention": attention, "batch_size": batch_size, "pad_bucket": pad_bucket,
            "split_layer": None, "release": "once"}


def recorders(run_dir, limit: int, header: dict, pairs, tokenizer) -> tuple[SecureViewSpec, OwnerTruthRecorder]:
    """The server's recorder spec and the owner's truth recorder of ``--record-view N``;
    ``pairs``: (batch, its examples) for every text set the owner may load."""
    if run_dir is None:
        raise InputError("--record-view writes beside a run: give --out DIR")
    described = describe_batches(pairs, text_token_counter(tokenizer))
    return SecureViewSpec(str(run_dir), limit, header), OwnerTruthRecorder(str(run_dir), limit, described)
