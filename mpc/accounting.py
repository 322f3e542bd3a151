"""Count what each party really sends, at the transport.

CrypTen's own statistics count calls, not rounds, and log twice the bytes an
all-reduce really sends; they also mix the parties' traffic with the dealer's.
We wrap the communicator's methods instead and record, per process:

* ``online``: traffic between the two computing parties (owner <-> server);
* ``dealer``: traffic with the dealer (requests out, correlated randomness in).

A *round* is one communication call that waits for the peer (a batched call of
several tensors is one round).  Bytes are what this process puts on the wire.

The same hook can *audit* what a process receives: every received payload is
checked against a set of "canary" ring elements (fixed-point encodings of the
other party's secrets).  Honest shares and masked openings are uniform over
Z_2^64, so a canary hit means plaintext crossed the wire.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field

import torch

_BYTES_PER_ELEMENT = 8  # CrypTen shares are int64 ring elements


@dataclass
class ChannelStats:
    bytes: int = 0
    rounds: int = 0

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "rounds": self.rounds}


@dataclass
class TrafficLog:
    """Per-process traffic, split by channel, plus the canary audit."""

    online: ChannelStats = field(default_factory=ChannelStats)
    dealer: ChannelStats = field(default_factory=ChannelStats)
    received_elements: int = 0
    canary_hits: int = 0
    canaries: torch.Tensor | None = None
    sections: dict[str, "SectionStats"] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "online": self.online.as_dict(),
            "dealer": self.dealer.as_dict(),
            "bytes": self.online.bytes + self.dealer.bytes,
            "rounds": self.online.rounds + self.dealer.rounds,
            "ops": {name: s.as_dict() for name, s in self.sections.items()},
        }

    def reset(self) -> None:
        self.online = ChannelStats()
        self.dealer = ChannelStats()
        self.received_elements = 0
        self.canary_hits = 0
        self.sections = {}


@dataclass
class SectionStats:
    """Traffic and wall time of one kind of operation (linear, attention, norm, ...)."""

    online: ChannelStats = field(default_factory=ChannelStats)
    dealer: ChannelStats = field(default_factory=ChannelStats)
    wall_s: float = 0.0
    calls: int = 0

    def as_dict(self) -> dict:
        return {
            "online": self.online.as_dict(),
            "dealer": self.dealer.as_dict(),
            "wall_s": round(self.wall_s, 4),
            "calls": self.calls,
        }


_LOG = TrafficLog()
_LOCK = threading.Lock()
_INSTALLED = False


def log() -> TrafficLog:
    """This process's traffic log."""
    return _LOG


def set_canaries(values: torch.Tensor | None) -> None:
    """Audit received payloads against these int64 ring elements (None: off)."""
    _LOG.canaries = None if values is None else torch.unique(values.long().flatten())


@contextlib.contextmanager
def section(name: str):
    """Attribute the traffic and time inside to op type ``name`` (innermost wins).

    Time spent in a nested section counts only there, so the per-op times add up.
    """
    log_ = _LOG
    outer = log_.sections.get(log_.current[-1]) if log_.current else None
    stats = log_.sections.setdefault(name, SectionStats())
    log_.current.append(name)
    start = time.perf_counter()
    try:
        yield stats
    finally:
        spent = time.perf_counter() - start
        log_.current.pop()
        stats.wall_s += spent
        stats.calls += 1
        if outer is not None:
            outer.wall_s -= spent


def _nbytes(x) -> int:
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    return 0


def _audit(received) -> None:
    if isinstance(received, (list, tuple)):
        for t in received:
            _audit(t)
        return
    if not torch.is_tensor(received) or received.dtype != torch.long:
        return
    _LOG.received_elements += received.numel()
    if _LOG.canaries is not None and received.numel():
        _LOG.canary_hits += int(torch.isin(received.flatten().cpu(), _LOG.canaries).sum())


def _difference(result, sent, op):
    """What the peer contributed to a 2-party reduction: result minus (or xor) ours."""
    if isinstance(result, (list, tuple)):
        return [_difference(r, s, op) for r, s in zip(result, sent)]
    if op == torch.distributed.ReduceOp.BXOR:
        return result ^ sent
    return result - sent


def _channel(comm, group):
    if group is None or group is getattr(comm, "main_group", None):
        return _LOG.online
    return _LOG.dealer


def _record(channel: ChannelStats, nbytes: int) -> None:
    with _LOCK:
        channel.bytes += nbytes
        channel.rounds += 1
        if _LOG.current:
            stats = _LOG.sections[_LOG.current[-1]]
            part = stats.online if channel is _LOG.online else stats.dealer
            part.bytes += nbytes
            part.rounds += 1


def _wrap(cls, name, account):
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        account(self, result, *args, **kwargs)
        return result

    wrapper.__secptune_original__ = original
    setattr(cls, name, wrapper)


def install() -> None:
    """Patch CrypTen's DistributedCommunicator so every call is counted (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from crypten.communicator.distributed_communicator import DistributedCommunicator as C

    rank = lambda c: c.get_rank()  # noqa: E731

    def all_reduce(c, result, input, op=torch.distributed.ReduceOp.SUM, batched=False):
        _record(_LOG.online, _nbytes(input))
        _audit(_difference(result, input if batched else input, op))

    def reduce(c, result, input, dst, op=torch.distributed.ReduceOp.SUM, batched=False):
        if rank(c) == dst:
            _record(_LOG.online, 0)
            _audit(_difference(result, input, op))
        else:
            _record(_LOG.online, _nbytes(input))

    def broadcast(c, result, input, src, group=None, batched=False):
        channel = _channel(c, group)
        if rank(c) == src:
            _record(channel, _nbytes(input))
        else:
            _record(channel, 0)
            _audit(result)

    def send(c, result, tensor, dst, *a, **k):
        _record(_LOG.online, _nbytes(tensor))

    def recv(c, result, tensor, src=None, *a, **k):
        _record(_LOG.online, 0)
        _audit(result)

    def gather(c, result, tensor, dst):
        if rank(c) == dst:
            _record(_LOG.online, 0)
            _audit([t for i, t in enumerate(result) if i != dst])
        else:
            _record(_LOG.online, _nbytes(tensor))

    def all_gather(c, result, tensor):
        _record(_LOG.online, _nbytes(tensor) * (c.get_world_size() - 1))
        _audit([t for i, t in enumerate(result) if i != rank(c)])

    def scatter(c, result, scatter_list, src, *a, **k):
        if rank(c) == src:
            _record(_LOG.online, sum(_nbytes(t) for i, t in enumerate(scatter_list) if i != src))
        else:
            _record(_LOG.online, 0)
            _audit(result)

    def send_obj(c, result, obj, dst, group=None):
        import pickle

        _record(_channel(c, group), len(pickle.dumps(obj)) + 4)

    def recv_obj(c, result, src, group=None):
        _record(_channel(c, group), 0)

    def broadcast_obj(c, result, obj, src, group=None):
        import pickle

        sent = len(pickle.dumps(obj)) + 4 if rank(c) == src else 0
        _record(_channel(c, group), sent)

    for name, account in {
        "all_reduce": all_reduce,
        "reduce": reduce,
        "broadcast": broadcast,
        "send": send,
        "isend": send,
        "recv": recv,
        "gather": gather,
        "all_gather": all_gather,
        "scatter": scatter,
        "send_obj": send_obj,
        "recv_obj": recv_obj,
        "broadcast_obj": broadcast_obj,
    }.items():
        _wrap(C, name, account)
    _INSTALLED = True
