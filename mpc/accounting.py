"""Count what each party really sends, at the transport.

CrypTen's own statistics count calls, not rounds, and log twice the bytes an
all-reduce really sends; they also mix the parties' traffic with the dealer's.
Each of the communicator's methods runs an account function of this module
instead (:data:`COMMUNICATOR_ACCOUNTS`, installed by :mod:`mpc.crypten_seam`),
which records, per process:

* ``online``: traffic between the two computing parties (owner <-> server);
* ``dealer``: traffic with the dealer (requests out, correlated randomness in).

A *round* is one communication call that waits for the peer (a batched call of
several tensors is one round).  Bytes are what this process puts on the wire.
What the dealer sent this process is counted apart (``from_dealer``, one count
per call: the benchmark checks it against the dealer's own count).

The same hooks *audit* what a process learns, on every receive path (send/recv,
isend/irecv, broadcast, (all-)reduce, gather, scatter) and every integer dtype: the
payload received and, for an opening, the opened value itself (the sum of both
shares).  Two checks:

* canaries: exact ring elements that must never appear (fixed-point encodings of
  the other party's secrets, as CrypTen encodes them), on payloads of 48 bits or
  more (in a narrower ring thousands of canaries would match uniform values by
  chance);
* uniformity: a masked share or opening is uniform over its ring (Z_2^64, or Z_2^b
  for the b-bit openings of :mod:`mpc.trig`), so the top 4 bits of its elements
  fall evenly into 16 bins.  A payload of >= 1024 elements whose chi-square over
  those bins exceeds 400 (15 degrees of freedom: p < 1e-70 for uniform data) is
  counted as *unmasked* — a missing or broken mask, whatever the secret was.
  A payload of 0/1 values only is a one-bit opening: it must hold about as many
  ones as zeros (more than 75 % either way is unmasked).  Of a reveal to the owner
  (:mod:`mpc.reveal`, a reduce) only the server's share is checked: the result is
  the protocol's output.

Hits are counted per receive path, so a test can show that every path is watched.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
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
    from_dealer: ChannelStats = field(default_factory=ChannelStats)  # what the dealer sent here
    received_elements: int = 0
    canary_hits: int = 0
    unmasked: int = 0  # payloads that fail the uniformity check
    paths: dict[str, dict] = field(default_factory=dict)  # receive path -> its audit counts
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
        self.from_dealer = ChannelStats()
        self.received_elements = 0
        self.canary_hits = 0
        self.unmasked = 0
        self.paths = {}
        self.sections = {}

    def from_dealer_dict(self) -> dict:
        """What the dealer sent this process, in all and per op type (not in :meth:`as_dict`)."""
        return {
            "total": self.from_dealer.as_dict(),
            "ops": {name: s.from_dealer.as_dict() for name, s in self.sections.items()},
        }

    def audit_summary(self) -> dict:
        return {
            "received_elements": self.received_elements,
            "canary_hits": self.canary_hits,
            "unmasked": self.unmasked,
            "paths": {k: dict(v) for k, v in self.paths.items()},
        }


@dataclass
class SectionStats:
    """Traffic and wall time of one kind of operation (linear, attention, norm, ...)."""

    online: ChannelStats = field(default_factory=ChannelStats)
    dealer: ChannelStats = field(default_factory=ChannelStats)
    from_dealer: ChannelStats = field(default_factory=ChannelStats)
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


def log() -> TrafficLog:
    """This process's traffic log."""
    return _LOG


def set_canaries(values: torch.Tensor | None) -> None:
    """Audit received payloads against these int64 ring elements (None: off)."""
    _LOG.canaries = None if values is None else torch.unique(values.long().flatten())  # sorted
    _SORTED_CANARIES.clear()


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


_UNIFORM_MIN = 1024  # elements: below this the uniformity check is not run
_CHI2_LIMIT = 400.0
_BINS = 16
_WIDTH = threading.local()  # ring width of the small-dtype exchange in progress (mpc.trig)
# below this ring width a random element matches one of thousands of canaries by chance:
# narrow openings are checked for uniformity only
_CANARY_MIN_BITS = 48


def _chi2_top_bits(values: torch.Tensor, bits: int) -> float:
    top = (values >> (bits - 4)) & (_BINS - 1)  # the top 4 bits of a ``bits``-bit ring element
    counts = torch.bincount(top.flatten(), minlength=_BINS).double()
    expected = values.numel() / _BINS
    return float(((counts - expected) ** 2 / expected).sum())


def looks_unmasked(values: torch.Tensor, bits: int = 64) -> bool:
    """True when ``values`` (ring elements of ``bits`` bits) cannot be uniform: a missing mask."""
    values = values.flatten().long().cpu()
    if values.numel() < _UNIFORM_MIN:
        return False
    if bool(((values == 0) | (values == 1)).all()):  # a one-bit opening: masked bits are balanced
        return abs(values.double().mean().item() - 0.5) > 0.25
    if bits < 64:
        values = values & ((1 << bits) - 1)
    return _chi2_top_bits(values, bits) > _CHI2_LIMIT


_SORTED_CANARIES: dict[int, torch.Tensor] = {}  # ring width -> sorted unique canaries in that ring


def _canary_hits(values: torch.Tensor, width: int) -> int:
    """How many ``values`` are canaries: a binary search per value in the sorted canaries
    (torch.isin re-sorts the canaries on every call; thousands of small openings made that minutes)."""
    canaries = _SORTED_CANARIES.get(width)
    if canaries is None:
        canaries = _LOG.canaries if width == 64 else torch.unique(_LOG.canaries & ((1 << width) - 1))
        _SORTED_CANARIES[width] = canaries
    if not canaries.numel():
        return 0
    if width < 64:
        values = values & ((1 << width) - 1)
    found = canaries[torch.searchsorted(canaries, values).clamp_(max=canaries.numel() - 1)]
    return int((found == values).sum())


def _audit(received, path: str, bits: int | None = None) -> None:
    """Check what this process received (or opened) on ``path``; ``bits``: ring width
    (default: the dtype's width)."""
    if isinstance(received, (list, tuple)):
        for t in received:
            _audit(t, path, bits)
        return
    if not torch.is_tensor(received) or received.dtype.is_floating_point or received.dtype == torch.bool:
        return
    width = bits or getattr(_WIDTH, "bits", None) or torch.iinfo(received.dtype).bits
    values = received.flatten().cpu().long()
    stats = _LOG.paths.setdefault(path, {"received": 0, "canary_hits": 0, "unmasked": 0})
    stats["received"] += values.numel()
    _LOG.received_elements += values.numel()
    if _LOG.canaries is not None and values.numel() and width >= _CANARY_MIN_BITS:
        hits = _canary_hits(values, width)
        stats["canary_hits"] += hits
        _LOG.canary_hits += hits
    if looks_unmasked(received, width):
        stats["unmasked"] += 1
        _LOG.unmasked += 1


def audit_opened(values: torch.Tensor, bits: int) -> None:
    """Protocols that open values outside CrypTen's reductions (:mod:`mpc.trig`) report them here."""
    _audit(values, "opened", bits)


@contextlib.contextmanager
def ring_width(bits: int):
    """Payloads received inside are elements of Z_2^bits (held in a wider dtype)."""
    _WIDTH.bits = bits
    try:
        yield
    finally:
        _WIDTH.bits = None


class _AuditedWork:
    """An irecv's work handle: the payload is audited once the wait returns."""

    def __init__(self, work, tensor):
        self._work, self._tensor, self._done = work, tensor, False

    def wait(self, *args, **kwargs):
        out = self._work.wait(*args, **kwargs)
        if not self._done:
            self._done = True
            _audit(self._tensor, "irecv")
        return out

    def is_completed(self) -> bool:
        return self._work.is_completed()


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


def _record(channel: ChannelStats, nbytes: int, rounds: int = 1) -> None:
    with _LOCK:
        channel.bytes += nbytes
        channel.rounds += rounds
        if _LOG.current:
            stats = _LOG.sections[_LOG.current[-1]]
            part = stats.online if channel is _LOG.online else stats.dealer
            part.bytes += nbytes
            part.rounds += rounds


def record_send(channel: str, nbytes: int) -> None:
    """Count bytes sent outside CrypTen's communicator that nobody waits for (no round)."""
    _record(_LOG.online if channel == "online" else _LOG.dealer, nbytes, rounds=0)


def _from_dealer(nbytes: int) -> None:
    """Count a payload the dealer sent this process (one call, whatever it carried)."""
    with _LOCK:
        for stats in [_LOG.from_dealer] + ([_LOG.sections[_LOG.current[-1]].from_dealer] if _LOG.current else []):
            stats.bytes += nbytes
            stats.rounds += 1


# CrypTen's DistributedCommunicator methods and what each call counts and audits:
# ``account(communicator, result, *args, **kwargs)`` runs after the real call and may
# return a replacement result (an irecv's work handle, audited when it completes).

def _rank(c) -> int:
    return c.get_rank()


def _all_reduce(c, result, input, op=torch.distributed.ReduceOp.SUM, batched=False):
    _record(_LOG.online, _nbytes(input))
    _audit(_difference(result, input, op), "all_reduce")
    _audit(result, "all_reduce")  # the opened value: what this party learns


def _reduce(c, result, input, dst, op=torch.distributed.ReduceOp.SUM, batched=False):
    if _rank(c) == dst:
        _record(_LOG.online, 0)
        _audit(_difference(result, input, op), "reduce")  # the result is the protocol's output
    else:
        _record(_LOG.online, _nbytes(input))


def _broadcast(c, result, input, src, group=None, batched=False):
    channel = _channel(c, group)
    if _rank(c) == src:
        _record(channel, _nbytes(input))
    else:
        _record(channel, 0)
        _audit(result, "broadcast")
        if src == c.get_ttp_rank():
            _from_dealer(_nbytes(result))


def _send(c, result, tensor, dst, *a, **k):
    _record(_LOG.online, _nbytes(tensor))


def _recv(c, result, tensor, src=None, *a, **k):
    _record(_LOG.online, 0)
    _audit(result, "recv")


def _gather(c, result, tensor, dst):
    if _rank(c) == dst:
        _record(_LOG.online, 0)
        _audit([t for i, t in enumerate(result) if i != dst], "gather")
    else:
        _record(_LOG.online, _nbytes(tensor))


def _all_gather(c, result, tensor):
    _record(_LOG.online, _nbytes(tensor) * (c.get_world_size() - 1))
    _audit([t for i, t in enumerate(result) if i != _rank(c)], "all_gather")


def _scatter(c, result, scatter_list, src, *a, **k):
    if _rank(c) == src:
        _record(_LOG.online, sum(_nbytes(t) for i, t in enumerate(scatter_list) if i != src))
    else:
        _record(_LOG.online, 0)
        _audit(result, "scatter")


def _pickled_size(obj) -> int:
    """Bytes of an object message on the wire: CrypTen sends its pickle and a 4-byte length."""
    return len(pickle.dumps(obj)) + 4


def _send_obj(c, result, obj, dst, group=None):
    _record(_channel(c, group), _pickled_size(obj))


def _recv_obj(c, result, src, group=None):
    _record(_channel(c, group), 0)
    if src == c.get_ttp_rank():
        _from_dealer(_pickled_size(result))


def _broadcast_obj(c, result, obj, src, group=None):
    _record(_channel(c, group), _pickled_size(obj) if _rank(c) == src else 0)


def _irecv(c, work, tensor, src=None, *a, **k):
    # no round of its own: the exchange's round is counted at its isend
    return _AuditedWork(work, tensor)


COMMUNICATOR_ACCOUNTS = {
    "all_reduce": _all_reduce,
    "reduce": _reduce,
    "broadcast": _broadcast,
    "send": _send,
    "isend": _send,
    "recv": _recv,
    "irecv": _irecv,
    "gather": _gather,
    "all_gather": _all_gather,
    "scatter": _scatter,
    "send_obj": _send_obj,
    "recv_obj": _recv_obj,
    "broadcast_obj": _broadcast_obj,
}


def counted(original, account):
    """``original`` (a DistributedCommunicator method) that also runs ``account`` on each call;
    :mod:`mpc.crypten_seam` installs one per entry of :data:`COMMUNICATOR_ACCOUNTS`."""

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        replaced = account(self, result, *args, **kwargs)
        return result if replaced is None else replaced

    wrapper.__secptune_original__ = original
    return wrapper
