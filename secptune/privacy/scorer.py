"""The only reader of a view's ground truth (``truth.pt``).

Attacks hand in guesses and get back how many were right — per item, so the suite can
put confidence intervals on them — never the truth itself.  ``shuffled=True`` scores the
same guesses against another item's truth (a fixed derangement): the null baseline of
an attack that learned nothing about *this* text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import torch

from secptune.errors import InputError
from secptune.privacy.view import TRUTH, view_dir


class Scorer:
    def __init__(self, run_dir: str | Path | None = None, items: list[dict] | None = None):
        """The truth of ``run_dir``'s view, or ``items`` of public text (the suite's positive
        control, whose truth is no secret): dicts with ids, length, label, text."""
        if items is None:
            path = view_dir(run_dir) / TRUTH
            if not path.is_file():
                raise InputError(f"{run_dir} has no ground truth for its view ({path})")
            items = torch.load(path, weights_only=False)["items"]
            if any(it is None for it in items):
                raise InputError(f"{path}: the owner's side recorded no truth for some items")
        self._items = list(items)
        n = len(self._items)
        self._other = [(i + 1) % n for i in range(n)]  # derangement for the shuffled null

    def __len__(self) -> int:
        return len(self._items)

    def _truth(self, i: int, shuffled: bool) -> dict:
        return self._items[self._other[i] if shuffled else i]

    def tokens(self, guesses: list[torch.Tensor], shuffled: bool = False) -> list[tuple[int, int]]:
        """(right, total) per item over the text's own tokens (its private span: template
        and padding rows excluded), for guessed ids per released row; shuffled: scored
        against another item's text at the same offsets (common part only)."""
        out = []
        for i, g in enumerate(guesses):
            mine, t = self._items[i], self._truth(i, shuffled)
            lo, hi = mine["start"], mine["start"] + mine["private"]
            hi_common = min(hi, t["start"] + t["private"], len(g))
            right = int((g[lo:hi_common].long() == t["ids"][lo:hi_common]).sum()) if hi_common > lo else 0
            out.append((right, mine["private"]))
        return out

    def rouge_l(self, guesses: list[torch.Tensor], shuffled: bool = False) -> list[float]:
        """ROUGE-L F1 per item between the guessed and the true token ids over the text's private
        span (longest common subsequence; token level, so no tokenizer round trip decides it)."""
        out = []
        for i, g in enumerate(guesses):
            mine, t = self._items[i], self._truth(i, shuffled)
            lo, hi = mine["start"], mine["start"] + mine["private"]
            truth = t["ids"][t["start"] : t["start"] + t["private"]].tolist()
            out.append(_lcs_f1(g[lo:hi].long().tolist(), truth))
        return out

    def subset(self, indices: list[int]) -> "Scorer":
        """A scorer of these items only (for an attack run on part of a view)."""
        return Scorer(items=[self._items[i] for i in indices])

    def labels(self, guesses: list[int], shuffled: bool = False) -> list[int]:
        """1 per item whose label was guessed right (items without a label are skipped)."""
        return [int(g == self._truth(i, shuffled)["label"]) for i, g in enumerate(guesses)
                if self._items[i]["label"] is not None]

    def majority_rate(self) -> float:
        """The chance line of a label guess: the share of the most common label."""
        labels = [it["label"] for it in self._items if it["label"] is not None]
        return max(Counter(labels).values()) / len(labels) if labels else float("nan")

    def lengths(self, guesses: list[int], shuffled: bool = False) -> list[int]:
        """|guessed − true| text length per item."""
        return [abs(int(g) - self._truth(i, shuffled)["length"]) for i, g in enumerate(guesses)]

    def texts_digest(self) -> str:
        """A digest of the recorded texts in order: two runs' views cover the same texts iff
        their digests agree (the texts themselves stay here)."""
        h = hashlib.sha256()
        for it in self._items:
            h.update(repr((it["text"], it["label"])).encode())
        return h.hexdigest()

    def disjoint(self, examples: list) -> list:
        """Harness hygiene, not an attack step: ``examples`` without the owner's recorded
        texts, so no attack is trained on a text it is then scored on."""
        owned = {it["text"] for it in self._items}
        return [ex for ex in examples if ex.text not in owned]


def _lcs_f1(guess: list[int], truth: list[int]) -> float:
    if not guess or not truth:
        return 0.0
    prev = [0] * (len(truth) + 1)
    for g in guess:
        cur = [0]
        for j, t in enumerate(truth):
            cur.append(prev[j] + 1 if g == t else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(guess), lcs / len(truth)
    return 2 * p * r / (p + r)
