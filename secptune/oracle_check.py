"""A float32 plain session checked call by call against the float64 oracle (``--check-oracle``).

The float64 plain session is the oracle the secure tests compare with; float32 runs the
same approximations ~4x faster on a CPU, which is what lets tuning-accuracy questions
reach budgets where tuning gains.  Whether a float32 answer may stand in for the oracle's
is checked, not assumed: :class:`OracleCheckedSession` scores every k-th call with both,
records how far apart they are, and stops with :class:`OracleDivergenceError` when they
leave :class:`OracleBounds`.

Both sessions run one server preparation (the same activation bounds and RFA maps), so
a difference is the arithmetic's alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from secptune.errors import SecptuneError


class OracleDivergenceError(SecptuneError):
    """float32 scores left the stated bounds around the float64 oracle's."""


@dataclass(frozen=True)
class OracleBounds:
    """How far a float32 call may be from the float64 oracle's.

    loss_rtol:  per candidate, |loss32 − loss64| ≤ loss_rtol·|loss64| (calls with a known
                loss: the tuner's training calls, labelled `infer` batches).  1e-3 is the
                issue's acceptance bound: far below the loss differences CMA-ES ranks on.
    score_rtol: per call, max |s32 − s64| ≤ score_rtol·max |s64|.  Measured on SmolLM2 and
                the tiny models: ~1e-6 (float32 rounding; the limit exp's 8 squarings
                amplify it most, ~3e-5 relative in an attention weight).

    Predictions are recorded (agreement), not bounded on their own: with every score within
    δ, an argmax can only change where the oracle's top two are within 2δ of each other — a
    tie the score bound already accepts.  A non-finite difference always fails.
    """

    loss_rtol: float = 1e-3
    score_rtol: float = 1e-3


def compare_scores(fast: torch.Tensor, oracle: torch.Tensor) -> dict:
    """Score difference, prediction agreement and the smallest oracle margin among flips."""
    diff = (fast - oracle).abs()
    scale = float(oracle.abs().max())
    agree = fast.argmax(-1) == oracle.argmax(-1)
    out = {
        "sequences": int(oracle.shape[0]),
        "max_abs_score_diff": float(diff.max()),
        "rel_score_diff": float(diff.max()) / scale if scale > 0 else float(diff.max()),
        "agreement": float(agree.double().mean()),
        "flips": int((~agree).sum()),
    }
    if out["flips"]:  # how close to a tie the flipped rows were in the oracle
        top2 = oracle[~agree].topk(2, dim=-1).values
        out["min_flip_margin"] = float((top2[:, 0] - top2[:, 1]).min())
    return out


def compare_losses(fast: torch.Tensor, oracle: torch.Tensor) -> dict:
    rel = (fast - oracle).abs() / oracle.abs().clamp(min=1e-12)
    return {"candidates": int(oracle.numel()), "max_rel_loss_diff": float(rel.max()),
            "max_abs_loss_diff": float((fast - oracle).abs().max())}


class OracleCheckedSession:
    """``fast`` (a float32 PlainSession) answering every call; ``oracle`` (the float64 one on
    the same server preparation) scoring every ``every``-th call *on each text set* as well
    (its 1st, (every+1)-th, ... call).  Counted per text set so that the tuner's alternating
    training and dev calls cannot alias (a global count of 2 would check dev calls only):
    training losses are checked every ``every`` generations, and a text set scored once (a
    test batch) is always checked — those are the predictions a report quotes.  Implements :class:`secptune.scoring.ScoringSession`; the results
    are the fast session's, each checked call's comparison is in its ``forward_log`` entry
    under ``"oracle"``, and :meth:`summary` is what reports record.

    ``fail``: raise :class:`OracleDivergenceError` on a call outside ``bounds`` (the
    product's behaviour); False records it and goes on (measurements that want every
    figure, research/f32_oracle.py)."""

    def __init__(self, fast, oracle, every: int = 1, bounds: OracleBounds = OracleBounds(), fail: bool = True):
        if every < 1:
            raise SecptuneError(f"--check-oracle takes a call interval of at least 1, not {every}")
        self.fast, self.oracle, self.every, self.bounds, self.fail = fast, oracle, every, bounds, fail
        self.forward_log: list[dict] = []
        self.checks: list[dict] = []
        self._losses: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.calls = 0
        self._calls_on: dict[int, int] = {}  # text set -> calls on it so far

    # what the tuner and infer read from a plain session
    def __getattr__(self, name):  # embedding_std, attention, arch, device, dtype, ...
        if name in ("fast", "oracle"):
            raise AttributeError(name)
        return getattr(self.fast, name)

    @property
    def range_warnings(self) -> dict:
        return self.fast.range_warnings

    def set_loss(self, text_id: int, loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Per-candidate losses of a call on ``text_id`` from its scores [R·B, L] (the caller
        knows the labels; the session does not): checked calls then compare losses too."""
        self._losses[text_id] = loss

    def load_texts(self, batch) -> int:
        text_id = self.fast.load_texts(batch)
        if self.oracle.load_texts(batch) != text_id:
            raise RuntimeError("the float32 session and its oracle numbered a text set differently")
        return text_id

    def scores(self, text_id: int, prompts: torch.Tensor) -> torch.Tensor:
        out = self.fast.scores(text_id, prompts)
        entry = dict(self.fast.forward_log[-1])
        self.calls += 1
        self._calls_on[text_id] = self._calls_on.get(text_id, 0) + 1
        if (self._calls_on[text_id] - 1) % self.every == 0:
            started = time.perf_counter()
            reference = self.oracle.scores(text_id, prompts)
            check = {"call": self.calls, "texts": text_id, "wall_s": entry["wall_s"],
                     "oracle_wall_s": time.perf_counter() - started, **compare_scores(out, reference)}
            if text_id in self._losses:
                check.update(compare_losses(self._losses[text_id](out), self._losses[text_id](reference)))
            check["within_bounds"] = not self._violations(check)
            entry["oracle"] = check
            self.checks.append(check)
            if self.fail and not check["within_bounds"]:
                raise OracleDivergenceError(self._message(check))
        self.forward_log.append(entry)
        return out

    def _violations(self, check: dict) -> list[str]:
        b, out = self.bounds, []
        if not check["rel_score_diff"] <= b.score_rtol:  # `not <=`: NaN fails too
            out.append(f"relative score difference {check['rel_score_diff']:.3g} > {b.score_rtol:g}")
        if "max_rel_loss_diff" in check and not check["max_rel_loss_diff"] <= b.loss_rtol:
            out.append(f"relative loss difference {check['max_rel_loss_diff']:.3g} > {b.loss_rtol:g}")
        return out

    def _message(self, check: dict) -> str:
        return (
            f"float32 approximations diverged from the float64 oracle on call {check['call']} "
            f"(text set {check['texts']}, {check['sequences']} sequences): {'; '.join(self._violations(check))} "
            f"(predictions agree on {check['agreement']:.1%}). float32 cannot stand in for the oracle on this "
            "model and input: run with --precision float64 (the oracle itself) and a new --out"
        )

    def summary(self) -> dict:
        """What the run's report records about the check (this process's calls)."""
        checks = self.checks
        out = {"every": self.every, "bounds": asdict(self.bounds), "calls": self.calls, "checked": len(checks)}
        if not checks:
            return out
        with_loss = [c for c in checks if "max_rel_loss_diff" in c]
        sequences = sum(c["sequences"] for c in checks)
        out.update(
            within_bounds=all(c["within_bounds"] for c in checks),
            max_rel_score_diff=max(c["rel_score_diff"] for c in checks),
            agreement=sum(c["agreement"] * c["sequences"] for c in checks) / sequences,
            flips=sum(c["flips"] for c in checks),
            sequences=sequences,
            max_rel_loss_diff=max((c["max_rel_loss_diff"] for c in with_loss), default=None),
            loss_checked_calls=len(with_loss),
            fast_wall_s=sum(c["wall_s"] for c in checks),
            oracle_wall_s=sum(c["oracle_wall_s"] for c in checks),
            oracle_range_warnings=self.oracle.range_warnings,
        )
        out["speedup"] = out["oracle_wall_s"] / out["fast_wall_s"] if out["fast_wall_s"] > 0 else math.nan
        return out

    def traffic(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        self.fast.close()
        self.oracle.close()
