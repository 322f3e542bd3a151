"""The server's view of a run, recorded beside it (``--record-view N``): ``RUN_DIR/view/``.

``view.pt``  what the server process received for the first N texts, per item (one text):
             ``rows`` [r, m, H] (its r releases: 1 when sent once, one per call with
             ``--release per-call``, at most ``MAX_RELEASES``) and ``positions`` [m]; plus
             ``public``: the mode and every public parameter (model, split layer,
             mechanism), which is all an attack may assume.
             Split modes that send gradients (``--mode guarded --variant online``) add
             ``grads`` [g, m, H] per item: the gradients the server received for it.
``view.json`` the same header, readable.
``truth.pt`` the owner's ground truth per item (token ids of the released rows, text
             length, label, text): written by the owner's side, read only by
             :class:`secptune.privacy.scorer.Scorer`.

Items are numbered in the order the server received them, so the server's tap and the
owner's tap agree without talking.  The format carries ``mode`` and per-item tensors so a
secure run's view (shares and masked openings) can be added as another mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from secptune.errors import InputError

FORMAT = 1
VIEW, HEADER, TRUTH = "view.pt", "view.json", "truth.pt"
MAX_RELEASES = 64  # per item: enough for the averaging attack, bounded on disk


def view_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "view"


class ViewRecorder:
    """Taps both ends of the split session's wire for the first ``limit`` texts.

    ``describe(batch)``: the owner's (label, text) per row of a batch, for the truth file;
    ``text_tokens(text)``: how many tokens the text itself has (the rest of a row is the
    public template and padding, which no attack gets credit for)."""

    def __init__(self, run_dir: str | Path, limit: int, public: dict, describe=None, text_tokens=None):
        self.dir, self.limit, self.public, self.describe = view_dir(run_dir), limit, public, describe
        self.text_tokens = text_tokens
        self.items: list[dict] = []  # server side: rows received
        self.truth: dict[int, dict] = {}  # owner side
        self._where: dict[int, list[tuple[int, int]]] = {}  # text set -> [(row, item)]

    # -- the server's tap: what arrives -------------------------------------------
    def server_received(self, text_id: int, release) -> None:
        if text_id not in self._where:
            self._where[text_id] = []
            for row in range(release.hidden.size(0)):
                if len(self.items) >= self.limit:
                    break
                self._where[text_id].append((row, len(self.items)))
                self.items.append({"rows": [], "positions": release.positions.clone(), "prompt_start": release.prompt_start})
        for row, item in self._where[text_id]:
            if len(self.items[item]["rows"]) < MAX_RELEASES:
                self.items[item]["rows"].append(release.hidden[row].detach().float().clone())

    def server_received_grad(self, text_id: int, grad: torch.Tensor) -> None:
        """A gradient w.r.t. the server's output for text set ``text_id`` (rows as its release)."""
        for row, item in self._where.get(text_id, []):
            grads = self.items[item].setdefault("grads", [])
            if len(grads) < MAX_RELEASES:
                grads.append(grad[row].detach().float().clone())

    # -- the owner's tap: what it knows ----------------------------------------------
    def owner_loaded(self, text_id: int, batch, ids: torch.Tensor, positions: torch.Tensor) -> None:
        described = self.describe(batch) if self.describe else None
        pred = batch.pred_onehot.argmax(-1)
        for row, item in self._where.get(text_id, []):
            length = int((positions <= pred[row]).sum())  # released rows up to the scored token
            label, text = described[row] if described else (None, None)
            private = self.text_tokens(text) if self.text_tokens and text is not None else length
            self.truth[item] = truth_item(ids[row], length, label, text, batch.prompt_start, private)

    def write(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        items = [{"rows": torch.stack(it["rows"]), "positions": it["positions"], "prompt_start": it["prompt_start"],
                  **({"grads": torch.stack(it["grads"])} if it.get("grads") else {})} for it in self.items]
        header = {"format": FORMAT, **self.public, "items": len(items),
                  "releases": [len(it["rows"]) for it in self.items]}
        torch.save({"header": header, "items": items}, self.dir / VIEW)
        (self.dir / HEADER).write_text(json.dumps(header, indent=1))
        torch.save({"items": [self.truth.get(i) for i in range(len(items))]}, self.dir / TRUTH)
        return self.dir


def truth_item(ids: torch.Tensor, length: int, label, text, start: int, private: int) -> dict:
    """One text's truth: the ids of its released rows, its length in rows (to the scored
    token), label and text, and its private span: rows start .. start + private − 1 hold
    the text's own tokens (the template's and padding rows are public)."""
    return {"ids": ids.clone(), "length": length, "label": label, "text": text, "start": start,
            "private": min(private, length - start)}


def load_view(run_dir: str | Path) -> dict:
    """The recorded server view (never the truth: see :class:`secptune.privacy.scorer.Scorer`)."""
    path = view_dir(run_dir) / VIEW
    if not path.is_file():
        raise InputError(f"{run_dir} has no recorded view ({path}); run with --record-view N")
    return torch.load(path, weights_only=False)
