"""The dealer: correlated randomness on request, from an allow-list, agreed by both parties.

The dealer (rank 2) shares one keystream (:mod:`mpc.prg`) with each computing party;
the party sends it its own key at start-up.  For a Beaver triple, say, both parties
draw their shares of a, b from their streams, the dealer draws the same values from
both streams, computes c = a·b and sends the data owner c − c1, where c1 is the
server's next draw (the server draws it too).  The server never talks to the dealer
again after sending its key, and the dealer never sees a share of data or weights —
only request names and shapes.

Every request is a registered *dealer function* (:func:`dealer_function`), CrypTen's
five tuple kinds included (this module serves them in place of CrypTen's
``TTPServer``, whose request loop ran any method name it was sent).  Before serving
a request the dealer checks it:

* its name is registered and its sizes are bounded (:data:`MAX_ELEMENTS`);
* the **server asked for the same thing**: for every request the server sends the
  dealer a 32-byte hash chained over all requests so far (no wait on its side);
  the dealer serves only if the owner's request hashes to the same chain.  An owner
  who asks for anything the protocol did not (an extra request, another size, a
  reordering) would otherwise make the dealer draw from the server's stream ahead of
  the server and hand back values the server is about to use as masks.

A refused request ends the session with :class:`DealerRefusedError` on the owner's
side naming the reason; the server stops with a transport error or timeout.  No
reply is a raw output of the server's stream: requests that only make the dealer
remember a mask (``hold_mask``, ``fixed_masks``) get an empty reply and draw nothing
from the server's stream.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import pkgutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from mpc import accounting, prg, profiling
from mpc.errors import DealerRefusedError
from mpc.prg import place
from mpc.ring import ring_matmul

MAX_ELEMENTS = 1 << 31  # one reply or operand: 16 GiB of int64 at most (the server agrees to sizes anyway)
REFUSED = "refused"

_FUNCTIONS: dict[str, Callable] = {}
_SHAPE_ARGS: dict[str, tuple[int, ...]] = {}  # request name -> which arguments are shapes (or lists of shapes)
_RELEASE_HOOKS: list[Callable] = []  # dealer side: fn(handles) drops held values
_PENDING_RELEASE: list[int] = []  # party side: handles to release with the next request


def dealer_function(name: str, shape_args: tuple[int, ...] = ()):
    """Register ``fn(dealer, size, *args)`` as dealer request ``name``; ``shape_args``: the
    positions in ``args`` that hold a shape or a list of shapes (bounded like ``size``).

    ``fn`` returns the data owner's share (shape ``size``); it may use
    ``dealer.prss(size)`` (the plaintext sum of both parties' next draws),
    ``dealer.prss_server(size)`` (the server's next draw alone) and
    ``dealer.draws(size)`` (each party's next draw, separately).
    """

    def register(fn):
        _FUNCTIONS[name] = fn
        _SHAPE_ARGS[name] = tuple(shape_args)
        return fn

    return register


def registered() -> tuple[str, ...]:
    """The allow-list: every request name the dealer serves.  Every module of this package
    is imported first, so a protocol file that registers its dealer half (``@dealer_function``)
    is found without a list to keep."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    return tuple(sorted(_FUNCTIONS))


def release_hook(fn: Callable) -> Callable:
    """Register ``fn(handles)`` (dealer side): forget the values held under these handles."""
    _RELEASE_HOOKS.append(fn)
    return fn


def release_later(handle: int) -> None:
    """Party side: the dealer may forget what it holds under ``handle``; the notice
    travels with the next request (no extra round)."""
    _PENDING_RELEASE.append(handle)


# ---- the request, as both parties and the dealer see it -----------------------

def _plain(value):
    """JSON-able form of a request argument (tuples and sizes become lists)."""
    if isinstance(value, (tuple, list, torch.Size)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"dealer request argument of type {type(value).__name__} is not allowed")


def _canonical(message: dict) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


class _Chain:
    """SHA-256 chained over requests: both ends compute it independently."""

    def __init__(self):
        self.digest = bytes(32)
        self.count = 0

    def update(self, message: dict) -> bytes:
        self.digest = hashlib.sha256(self.digest + _canonical(message)).digest()
        self.count += 1
        return self.digest


_CLIENT_CHAIN = _Chain()
_PENDING_SENDS: list = []


def _digest_tensor(digest: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(digest), dtype=torch.int64).clone()


def request(name: str, size, *args, device=None):
    """Client side: both parties call this in the same order; returns this party's share (int64).

    The owner's share arrives from the dealer; the server draws its own from the
    stream it shares with the dealer and sends the dealer the request's chained hash.
    """
    import crypten.communicator as comm
    from crypten.mpc.provider import ttp_provider


    channel = comm.get()
    client = ttp_provider.TTPClient.get()
    message = {"f": name, "size": _plain(tuple(size)), "args": _plain(args)}
    _check_request_shapes(message)  # the server draws ``size`` itself
    if _PENDING_RELEASE:
        message["release"] = list(_PENDING_RELEASE)
        _PENDING_RELEASE.clear()
    digest = _CLIENT_CHAIN.update(message)
    ttp_rank = channel.get_ttp_rank()
    if channel.get_rank() == 0:
        channel.send_obj(message, ttp_rank, client.ttp_group)
        reply = channel.recv_obj(ttp_rank, client.ttp_group)
        if isinstance(reply, dict) and REFUSED in reply:
            raise DealerRefusedError(f"the dealer refused request {name!r}: {reply[REFUSED]}")
        result = torch.empty(tuple(reply), dtype=torch.long)
        if result.numel():
            channel.broadcast(result, ttp_rank, client.comm_group)
        return place(result, device)
    tensor = _digest_tensor(digest)
    # (work, buffer): gloo needs the buffer alive until its send completes
    _PENDING_SENDS[:] = [p for p in _PENDING_SENDS if not p[0].is_completed()]
    _PENDING_SENDS.append((ttp_provider.dist.isend(tensor, dst=ttp_rank, group=client.ttp_group), tensor))
    accounting.record_send("dealer", tensor.numel() * 8)
    return client.get_generator(device=device).ring(tuple(size), device)


def party_draw(size, device=None):
    """Both parties' next draw from their dealer-shared streams (a share of a PRSS value)."""
    from crypten.mpc.provider import ttp_provider

    return ttp_provider.TTPClient.get().get_generator(device=device).ring(tuple(size), device)


# ---- CrypTen's tuple kinds, served here ----------------------------------------

_TRIPLE_OPS = ("mul", "matmul")


def _op_shape(op: str, size0, size1) -> tuple:
    """The shape of ``op(a, b)`` (torch's broadcasting rules) from the operands' shapes alone.

    Computed by hand: the same on meta tensors goes through torch's Python decompositions,
    whose first call imports torch._dynamo (~1 s in each process, in the first forward)."""
    if op not in _TRIPLE_OPS:
        raise ValueError(f"triples for {op!r} are not served (only {', '.join(_TRIPLE_OPS)})")
    s0, s1 = tuple(size0), tuple(size1)
    if op == "mul":
        return tuple(torch.broadcast_shapes(s0, s1))
    if not s0 or not s1:
        raise ValueError(f"matmul of a 0-d operand: {s0} @ {s1}")
    a, b = (1, *s0) if len(s0) == 1 else s0, (*s1, 1) if len(s1) == 1 else s1
    if a[-1] != b[-2]:
        raise ValueError(f"matmul shapes {s0} @ {s1} do not match")
    out = (*torch.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1])
    if len(s0) == 1:
        out = out[:-2] + out[-1:]
    if len(s1) == 1:
        out = out[:-1]
    return tuple(out)


@dealer_function("additive", shape_args=(0, 1))
def _deal_additive(dealer, size, size0, size1, op):
    _op_shape(op, size0, size1)
    a, b = dealer.prss(torch.Size(size0)), dealer.prss(torch.Size(size1))
    c = a * b if op == "mul" else ring_matmul(a, b)
    return c - dealer.prss_server(c.size())


@dealer_function("square")
def _deal_square(dealer, size):
    r = dealer.prss(torch.Size(size))
    return r * r - dealer.prss_server(torch.Size(size))


@dealer_function("binary", shape_args=(0, 1))
def _deal_binary(dealer, size, size0, size1):
    a0, a1 = dealer.draws(torch.Size(size0))
    b0, b1 = dealer.draws(torch.Size(size1))
    c = (a0 ^ a1) & (b0 ^ b1)
    return c ^ dealer.prss_server(c.size())


@dealer_function("wraps")
def _deal_wraps(dealer, size):
    from crypten.common.util import count_wraps

    return count_wraps(list(dealer.draws(torch.Size(size)))) - dealer.prss_server(torch.Size(size))


@dealer_function("B2A")
def _deal_b2a(dealer, size):
    r0, r1 = dealer.draws(torch.Size(size))
    return ((r0 ^ r1) & 1) - dealer.prss_server(torch.Size(size))


class TupleProvider:
    """CrypTen's TTP tuple provider methods, routed through :func:`request`
    (:mod:`mpc.crypten_seam` puts each on ``TrustedThirdParty``)."""

    @staticmethod
    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        from crypten.mpc.primitives import ArithmeticSharedTensor as A

        if args or kwargs:
            raise ValueError(f"triples with extra arguments {args} {kwargs} are not served")
        out = _op_shape(op, size0, size1)
        a, b = party_draw(size0, device), party_draw(size1, device)
        c = request("additive", out, tuple(size0), tuple(size1), op, device=device)
        return A.from_shares(a, precision=0), A.from_shares(b, precision=0), A.from_shares(c, precision=0)

    @staticmethod
    def _random_and_dealt(name: str, size, device):
        """Shares of a random r (both parties' draws) and of the dealer's value ``name`` of r."""
        from crypten.mpc.primitives import ArithmeticSharedTensor as A

        r = party_draw(size, device)
        dealt = request(name, tuple(size), device=device)
        return A.from_shares(r, precision=0), A.from_shares(dealt, precision=0)

    @staticmethod
    def square(self, size, device=None):
        return TupleProvider._random_and_dealt("square", size, device)  # r, r²

    @staticmethod
    def generate_binary_triple(self, size0, size1, device=None):
        from crypten.mpc.primitives import BinarySharedTensor as B

        a, b = party_draw(size0, device), party_draw(size1, device)
        out = tuple(torch.broadcast_shapes(tuple(size0), tuple(size1)))
        c = request("binary", out, tuple(size0), tuple(size1), device=device)
        return B.from_shares(a), B.from_shares(b), B.from_shares(c)

    @staticmethod
    def wrap_rng(self, size, device=None):
        return TupleProvider._random_and_dealt("wraps", size, device)  # r, its wrap count θ_r

    @staticmethod
    def B2A_rng(self, size, device=None):
        from crypten.mpc.primitives import ArithmeticSharedTensor as A
        from crypten.mpc.primitives import BinarySharedTensor as B

        r_bit = party_draw(size, device) & 1
        r_arith = request("B2A", tuple(size), device=device)
        return A.from_shares(r_arith, precision=0), B.from_shares(r_bit)


def refuse_raw_request(self, *args, **kwargs):
    """Replaces the TTP client's ``ttp_request``: every request goes through :func:`request`."""
    raise RuntimeError("CrypTen's raw TTP request path is disabled in secptune; use mpc.dealer.request")


def reset_client() -> None:
    """A party starting a session: its request chain starts from zero, as the dealer's does."""
    _CLIENT_CHAIN.__init__()


# ---- the dealer process ---------------------------------------------------------

def _check_sizes(value, where: str) -> None:
    """A shape (list of ints) or a list of shapes: non-negative and bounded."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        for v in value:
            _check_sizes(v, where)
        return
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: {value!r} is not a shape")
    if any(v < 0 for v in value) or math.prod(value) > MAX_ELEMENTS:
        raise ValueError(f"{where}: shape {value} is negative or above {MAX_ELEMENTS} elements")


def _check_request_shapes(message: dict) -> None:
    """The reply's shape and every argument the function declares a shape."""
    name, args = message["f"], message["args"]
    _check_sizes(message["size"], name)
    for i in _SHAPE_ARGS.get(name, ()):
        if i >= len(args):
            raise ValueError(f"{name}: missing shape argument {i}")
        _check_sizes(args[i], name)


class Dealer:
    """The dealer process: receives both parties' keys, then serves requests until told to stop."""

    def __init__(self):
        import crypten
        import crypten.communicator as comm


        crypten.init()
        self.comm = comm.get()
        self.ttp_group, self.comm_group = self.comm.ttp_group, self.comm.ttp_comm_group
        keys = [prg.key_to_tensor(bytes(prg.KEY_BYTES)) for _ in range(2)]
        for rank, key in enumerate(keys):
            self._dist.recv(key, src=rank, group=self.ttp_group)
        self.streams = [prg.stream(prg.key_from_tensor(k), f"party {r}") for r, k in enumerate(keys)]
        self.chain = _Chain()
        self.allowed = registered()
        self.request_times = profiling.RequestTimes()
        self._timed = profiling.enabled()

    @property
    def _dist(self):
        from crypten.mpc.provider import ttp_provider

        return ttp_provider.dist

    # what dealer functions use
    def draws(self, size) -> tuple[torch.Tensor, torch.Tensor]:
        return self.streams[0].ring(size), self.streams[1].ring(size)

    def prss(self, size) -> torch.Tensor:
        a0, a1 = self.draws(size)
        return a0 + a1

    def prss_server(self, size) -> torch.Tensor:
        return self.streams[1].ring(size)

    def serve(self) -> int:
        """Answer requests until the owner's "terminate"; returns how many were served."""
        while True:
            message = self.comm.recv_obj(0, self.ttp_group)
            if message == "terminate":
                return self.chain.count
            problem = self._problem(message)
            if problem:
                print(f"secptune dealer: refused a request: {problem}", file=sys.stderr, flush=True)
                self.comm.send_obj({REFUSED: problem}, 0, self.ttp_group)
                raise DealerRefusedError(f"refused a request of the data owner: {problem}")
            started = time.perf_counter()
            result = self._answer(message)
            answered = time.perf_counter()
            self.comm.send_obj(tuple(result.shape), 0, self.ttp_group)
            if result.numel():
                self.comm.broadcast(result, self.comm.get_ttp_rank(), self.comm_group)
            if self._timed:
                self.request_times.add(message["f"], answered - started, time.perf_counter() - answered)

    def _problem(self, message) -> str | None:
        if not isinstance(message, dict) or not isinstance(message.get("f"), str):
            return f"not a request: {type(message).__name__}"
        name = message["f"]
        expected = self.chain.update(message)
        theirs = torch.empty(4, dtype=torch.int64)
        self._dist.recv(theirs, src=1, group=self.ttp_group)
        if theirs.numpy().tobytes() != expected:
            return (f"request #{self.chain.count} ({name!r}) differs from what the server asked for at this "
                    "point of the protocol")
        if name not in self.allowed:
            return f"{name!r} is not a dealer request (allowed: {', '.join(self.allowed)})"
        try:
            _check_request_shapes(message)
        except (ValueError, TypeError, KeyError) as exc:
            return str(exc)
        return None

    def _answer(self, message: dict) -> torch.Tensor:
        for hook in _RELEASE_HOOKS:
            hook(message.get("release", ()))
        size = tuple(message["size"])
        result = _FUNCTIONS[message["f"]](self, size, *message["args"])
        if tuple(result.shape) != size:
            raise DealerRefusedError(f"dealer function {message['f']!r} made shape {tuple(result.shape)}, request said {size}")
        return result
