"""Forward-only prompt tuning: CMA-ES on the data owner against the (secure) model.

The owner keeps a latent z in R^d and a fixed random projection A (D x d,
D = prompt_len x hidden); the prompt is A z.  Every generation, the whole
population (R candidates) is scored on the training texts in one forward pass,
the owner computes the losses from the revealed label-word scores, and CMA-ES
``tell``s and ``ask``s.  Nothing about z, A, the data, the labels or the loss
reaches the server: it only sees commands with shapes.

The run is checkpointed after every generation (CMA-ES state, RNG states,
history, best prompt); ``--resume`` continues from the last one and reaches the
same result as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpc import approx
from secptune.errors import InputError, SecptuneError
from secptune.scoring import ScoringSession
from secptune.batch import Batch

CHECKPOINT = "checkpoint.pt"
# what --resume may change: how long the run goes on and how large the final test is.  Everything
# else (seed, model, data, CMA-ES and prompt settings) defines the search and must stay the same.
RESUME_MAY_CHANGE = ("budget", "patience", "test_limit", "time_limit", "device", "check_oracle")
# what CMA-ES is told for every candidate of a generation whose secure forward failed its range
# check (one bit per forward: it does not say which candidate): all equal, so that generation
# ranks nothing; the server is not told (docs/protocol.md, "Range checks under MPC")
INVALID_LOSS = 1e6


@dataclass
class TuneConfig:
    task: str = "sst2"
    model: str = "smollm2"
    mode: str = "secure"
    data: str | None = None
    train: str | None = None
    test: str | None = None
    template: str | None = None
    verbalizer: list[str] | None = None
    k: int = 16
    seed: int = 42
    prompt_len: int = 50
    intrinsic_dim: int = 500
    popsize: int = 20
    budget: int = 8000  # candidate evaluations (API calls), BBT's default
    sigma0: float = 1.0
    alpha: float = 1.0
    loss: str | None = None  # default per task: ce, or hinge for mrpc/rte
    attention: str | None = None  # None: secptune.infer.attention_for's default (RFA where approximations run)
    exact: bool = False  # plain mode: transformers' model in float32 instead of the approximations (oracle)
    precision: str | None = None  # plain approximations: "float64" (None: the oracle) or "float32"
    check_oracle: int = 0  # float32: score every k-th call with the float64 oracle too (secptune.oracle_check)
    device: str = "cpu"
    test_limit: int | None = None
    eval_every: int = 1
    patience: int | None = None
    time_limit: float | None = None  # minutes of tuning in this process; then the best prompt so far is tested
    batch_size: int = 32  # test/dev chunk size
    pad_bucket: int = 0  # pad text lengths to multiples of this (hides exact lengths from the server)
    cfg: dict = field(default_factory=lambda: asdict(approx.ApproxConfig()))
    # --mode privtune (secptune.split_job.SplitOptions)
    split_layer: int = 0
    noise: str = "dchi"
    eta: str = "inf"
    release: str = "once"
    record_view: int = 0
    # --mode guarded (secptune.guarded_job.GuardedOptions)
    variant: str = "online"
    dcor: float = 0.0
    quant_bits: int = 32
    in_layers: int = 1
    out_layers: int | None = None
    epochs: int = 10
    lr: float = 1e-3
    train_batch: int = 8
    harden_steps: int = 100
    emulator_keep: int = 2

    @property
    def generations(self) -> int:
        return max(1, self.budget // self.popsize)


@dataclass
class TextSets:
    """Owner-side plaintext inputs; each Batch is one text set of the session."""

    train: Batch
    train_labels: list[int]
    dev: list[Batch]
    dev_labels: list[int]
    test: list[Batch]
    test_labels: list[int]
    dev_zero: list[Batch]  # the same texts without prompt slots (zero-shot)
    test_zero: list[Batch] | None  # None: the caller knows the zero-shot test score already
    verbalizer: torch.Tensor
    hidden: int
    metric: str


# -- losses and metrics (owner side, plaintext) ---------------------------------
def losses(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-candidate loss from scores [R, B, L] and labels [B]."""
    if kind == "ce":
        logp = torch.log_softmax(scores, dim=-1)
        return -logp.gather(-1, labels.expand(scores.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)
    if kind == "hinge":
        gold = scores.gather(-1, labels.expand(scores.shape[0], -1).unsqueeze(-1))
        margins = (1.0 - (gold - scores)).clamp(min=0)
        margins = margins.scatter(-1, labels.expand(scores.shape[0], -1).unsqueeze(-1), 0.0)
        return margins.sum(-1).mean(-1)
    raise InputError(f"--loss must be ce or hinge, not {kind!r}")


def metric(pred: list[int], labels: list[int], kind: str) -> float:
    if kind == "f1":
        tp = sum(p == 1 and y == 1 for p, y in zip(pred, labels))
        fp = sum(p == 1 and y != 1 for p, y in zip(pred, labels))
        fn = sum(p != 1 and y == 1 for p, y in zip(pred, labels))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return sum(p == y for p, y in zip(pred, labels)) / len(labels)


# -- the projection -------------------------------------------------------------
def projection(cfg: TuneConfig, hidden: int, embedding_std: float) -> torch.Tensor:
    """BBT's random projection A ~ N(0, sigma_A), sigma_A = alpha * std_emb / (sqrt(d) * sigma0).

    Regenerated from the seed (never saved), so a checkpoint holds no large tensors.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    std = cfg.alpha * embedding_std / (math.sqrt(cfg.intrinsic_dim) * cfg.sigma0)
    D = cfg.prompt_len * hidden
    return torch.randn(D, cfg.intrinsic_dim, generator=gen, dtype=torch.float64) * std


def prompts_from(A: torch.Tensor, zs, prompt_len: int, hidden: int) -> torch.Tensor:
    z = torch.as_tensor(np.asarray(zs), dtype=torch.float64)
    return (z @ A.T).reshape(len(z), prompt_len, hidden)


# -- checkpoints ----------------------------------------------------------------
def _save_checkpoint(out: Path, state: dict) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)  # atomic: a kill never leaves a torn checkpoint


def _saved_setting(saved: dict, key: str):
    """A checkpoint's setting; one an older version did not have yet is its default then
    (so a new option, left at its default, does not block --resume of an older run)."""
    default = asdict(TuneConfig())[key]
    if key == "cfg":
        return {**default, **saved.get("cfg", {})}
    return saved.get(key, default)


def _load_checkpoint(out: Path, cfg: TuneConfig) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    state["bytes"] += state.pop("session_bytes")  # traffic of the interrupted session
    state["rounds"] += state.pop("session_rounds")
    now = asdict(cfg)
    changed = sorted(k for k in now if k not in RESUME_MAY_CHANGE and _saved_setting(state["config"], k) != now[k])
    if changed:
        raise SecptuneError(
            f"{path} belongs to a run with different settings ({', '.join(changed)}); use another --out or "
            f"the same flags (only {', '.join(RESUME_MAY_CHANGE)} may change on --resume)"
        )
    state["config"] = now
    return state


# -- evaluation -----------------------------------------------------------------
def _evaluate(session: ScoringSession, text_ids: list[int], prompt: torch.Tensor, labels: list[int], kind: str) -> float:
    pred: list[int] = []
    for tid in text_ids:
        pred += session.scores(tid, prompt.unsqueeze(0)).argmax(-1).tolist()
    return metric(pred, labels, kind)


def score_on_test(session: ScoringSession, texts: TextSets, prompt: torch.Tensor) -> float:
    """Test metric of ``prompt`` on ``session``; the prompt may have been tuned on another session
    (research/rfa_fidelity.py scores a prompt tuned under RFA with exact softmax and vice versa)."""
    return _evaluate(session, [session.load_texts(b) for b in texts.test], prompt, texts.test_labels, texts.metric)


def tune_program(session: ScoringSession, cfg: TuneConfig, texts: TextSets, out_dir: str, resume: bool, show_progress: bool = True):
    """The owner's tuning loop; runs unchanged on a PlainSession or a SecureSession."""
    import cma
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(session, "range_policy"):  # secure: a range event is the owner's to handle, below
        session.range_policy = "report"
    events = _RangeEvents(session)
    loss_kind = cfg.loss or "ce"
    A = projection(cfg, texts.hidden, session.embedding_std)
    train_id = session.load_texts(texts.train)  # always text set 0
    dev_ids = [session.load_texts(b) for b in texts.dev]
    labels = torch.tensor(texts.train_labels)
    if hasattr(session, "set_loss"):  # --check-oracle: compare the training losses, not only the scores
        session.set_loss(train_id, lambda s: losses(s.view(-1, len(labels), s.shape[-1]), labels, loss_kind))
    state = _load_checkpoint(out, cfg) if resume else None
    if state is None:
        np.random.seed(cfg.seed)
        es = cma.CMAEvolutionStrategy(
            np.zeros(cfg.intrinsic_dim), cfg.sigma0,
            {"popsize": cfg.popsize, "seed": cfg.seed, "verbose": -9, "maxfevals": cfg.budget},
        )
        empty = torch.zeros(0, texts.hidden, dtype=torch.float64)
        zero_dev = _evaluate(session, [session.load_texts(b) for b in texts.dev_zero], empty, texts.dev_labels, texts.metric)
        state = {"config": asdict(cfg), "gen": 0, "history": [], "best": None, "zero_shot_dev": zero_dev,
                 "wall_s": 0.0, "bytes": 0, "rounds": 0, "since_best": 0, "train_forwards": [],
                 "range_events": 0, "invalid_generations": 0}
        earlier_wall = 0.0
    else:
        earlier_wall = state["wall_s"]  # generations run by the processes before this one
        state.setdefault("train_forwards", [])  # checkpoints written before this list was kept
        state.setdefault("range_events", 0)
        state.setdefault("invalid_generations", 0)
        es = pickle.loads(state["es"])
        np.random.set_state(state["np_state"])
    bar = tqdm(total=cfg.generations, initial=state["gen"], desc=f"tune {cfg.task}", disable=not show_progress,
               unit="gen", dynamic_ncols=True)
    started = time.perf_counter() - state["wall_s"]
    deadline = None if cfg.time_limit is None else time.perf_counter() + 60 * cfg.time_limit
    while state["gen"] < cfg.generations and not _early_stop(state, cfg):
        zs = es.ask()
        scores = session.scores(train_id, prompts_from(A, zs, cfg.prompt_len, texts.hidden))
        state["train_forwards"].append(session.forward_log[-1])  # kept across --resume: per-call figures
        per_candidate = losses(scores.view(len(zs), -1, scores.shape[-1]), labels, loss_kind)
        invalid = bool(session.forward_log[-1].get("range_event"))
        if invalid:  # the scores may be wrong: this generation's losses are invalid
            state["invalid_generations"] += 1
            es.tell(zs, [INVALID_LOSS] * len(zs))
        else:
            es.tell(zs, per_candidate.tolist())
        state["gen"] += 1
        best_idx = int(per_candidate.argmin())
        record = {"gen": state["gen"], "best_loss": float(per_candidate.min()), "mean_loss": float(per_candidate.mean())}
        if invalid:
            record.update(best_loss=math.nan, mean_loss=math.nan, range_event=True)
        elif state["gen"] % cfg.eval_every == 0 or state["gen"] == cfg.generations:
            z_best = np.asarray(zs[best_idx])
            dev = _evaluate(session, dev_ids, prompts_from(A, [z_best], cfg.prompt_len, texts.hidden)[0],
                            texts.dev_labels, texts.metric)
            record["dev_accuracy"] = dev
            if _better(dev, record["best_loss"], state["best"]):
                state["best"] = {"z": z_best.tolist(), "dev": dev, "gen": state["gen"], "loss": record["best_loss"]}
                state["since_best"] = 0
            else:
                state["since_best"] += 1
        state["range_events"] += events.new()
        sent, rounds = session.traffic()
        record.update(bytes=state["bytes"] + sent, rounds=state["rounds"] + rounds,
                      wall_s=time.perf_counter() - started)
        state["history"].append(record)
        state.update(es=pickle.dumps(es), np_state=np.random.get_state(), wall_s=record["wall_s"])
        _save_checkpoint(out, {**state, "session_bytes": sent, "session_rounds": rounds})
        bar.set_postfix(loss=f"{record['best_loss']:.3f}", dev=f"{record.get('dev_accuracy', float('nan')):.3f}",
                        MB=f"{record['bytes'] / 1e6:.0f}")
        bar.update(1)
        if deadline is not None and time.perf_counter() > deadline and state["gen"] < cfg.generations:
            # checked after a generation: every process adds at least one, so a best prompt exists
            state["stopped"] = f"time limit ({cfg.time_limit:g} min) after {state['gen']} of {cfg.generations} generations"
            break
    bar.close()
    if "stopped" in state:  # not in any checkpoint: saved before the limit was reached
        print(f"secptune: {state['stopped']}; --resume continues the run", file=sys.stderr, flush=True)
    return {**_finish(session, cfg, texts, A, state, events), "earlier_wall_s": earlier_wall}


class _RangeEvents:
    """Forwards of ``session`` whose range bit was 1 (secure sessions; others have none)."""

    def __init__(self, session):
        self.session, self.seen = session, 0

    def new(self) -> int:
        log = self.session.forward_log
        count = sum(1 for entry in log[self.seen :] if entry.get("range_event"))
        self.seen = len(log)
        return count


def _better(dev: float, loss: float, best: dict | None) -> bool:
    """Higher dev accuracy wins; on a tie (a 32-example dev set ties often) the lower training loss."""
    if best is None or dev > best["dev"]:
        return True
    return dev == best["dev"] and loss < best.get("loss", math.inf)


def _early_stop(state: dict, cfg: TuneConfig) -> bool:
    return cfg.patience is not None and state["since_best"] >= cfg.patience


def _finish(session: ScoringSession, cfg: TuneConfig, texts: TextSets, A: torch.Tensor, state: dict, events=None) -> dict:
    best = state["best"]
    if best is None:
        raise SecptuneError(
            f"no valid generation: the secure range check fired in all {state['gen']} generations, so no loss "
            "could be trusted; run the same job with --mode plain to see which ranges are exceeded (range_warnings)"
        )
    prompt = prompts_from(A, [best["z"]], cfg.prompt_len, texts.hidden)[0]
    zero_ids = None if texts.test_zero is None else [session.load_texts(b) for b in texts.test_zero]
    empty = torch.zeros(0, texts.hidden, dtype=torch.float64)
    final = {
        "dev": {"zero_shot": state["zero_shot_dev"], "tuned": best["dev"]},
        "test": {
            "zero_shot": None if zero_ids is None else _evaluate(session, zero_ids, empty, texts.test_labels, texts.metric),
            "tuned": score_on_test(session, texts, prompt),
        },
        "best_generation": best["gen"],
        "generations_run": state["gen"],
        "stopped": state.get("stopped"),
        "metric": texts.metric,
        # secure runs: forwards whose sampled range check fired (train generations, dev and test
        # evaluations); invalid_generations: training generations whose losses were discarded
        "range_events": state.get("range_events", 0) + (events.new() if events is not None else 0),
        "invalid_generations": state.get("invalid_generations", 0),
    }
    if hasattr(session, "summary"):  # --check-oracle: this process's calls against the float64 oracle
        final["oracle_check"] = session.summary()
    if getattr(session, "attention", None) is not None:  # as it ran: with the server's choice of RFA layers
        final["attention"] = session.attention.as_dict()
    return {"history": state["history"], "final": final, "prompt": prompt, "train_forwards": state["train_forwards"]}
