"""The part of ``torch.distributed`` CrypTen uses, over secptune's channels.

gloo (torch.distributed's CPU backend) has neither encryption nor authentication,
and its peers connect to ephemeral ports announced through the rendezvous store,
so it cannot be put behind a fixed tunnel.  secptune therefore replaces the
*transport* under CrypTen's ``DistributedCommunicator``: :func:`install` points the
module-level name ``dist`` in CrypTen's communicator and TTP-provider modules at a
:class:`Dist` (through :mod:`mpc.crypten_seam`), which implements point-to-point,
broadcast, (all-)reduce, (all-)gather, scatter, barrier and groups over
:class:`mpc.channels.Transport` (connections, start-up, faults; its frames are
:mod:`mpc.wire`).  CrypTen's code, the secure protocol, the dealer and the traffic
accounting (which wraps the communicator's methods) run unchanged.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Callable

import torch

from mpc import crypten_seam
from mpc.channels import Transport
from mpc.errors import NetworkConfigError, PeerLostError, TransportError
from mpc.net import Network
from mpc.roles import ROLES


# -- taps: what arrives at this process -------------------------------------------
# A tap is called for every tensor this process takes off the wire, as
# ``tap(kind, src, group, tensor)``: kind "message" (a point-to-point, broadcast,
# gather or scatter payload), "reduce_part" (a peer's contribution to a reduction)
# or "opened" (a reduction's result, what this process learns from it; src is then
# the peer whose part was combined, or -1 for several).  Payload bytes arrived =
# the bytes of the "message" and "reduce_part" tensors.  Taps must copy what they
# keep (the tensor may be a view of a reused buffer) and must not communicate.
# Used to record a party's view of a run (secptune.privacy.secure_view); off by default.
_TAPS: list[Callable] = []


@contextlib.contextmanager
def tapped(tap: Callable):
    """Call ``tap`` for everything this process receives inside the block."""
    _TAPS.append(tap)
    try:
        yield tap
    finally:
        _TAPS.remove(tap)


def _notify(kind: str, src: int, group: int, tensor: torch.Tensor) -> None:
    for tap in list(_TAPS):
        tap(kind, src, group, tensor)


# -- the torch.distributed subset CrypTen uses ----------------------------------
class Group:
    """A process group: an id (creation order, the same in every process) and its ranks."""

    def __init__(self, gid: int, ranks: list[int]):
        self.id = gid
        self.ranks = sorted(ranks)

    def size(self) -> int:
        return len(self.ranks)

    def rank(self) -> int:  # pragma: no cover - torch API shape
        raise NotImplementedError("use Dist.get_rank()")


class _Work:
    """An async operation: sends complete at once; receives complete in wait()."""

    def __init__(self, finish=None):
        self._finish = finish

    def wait(self, timeout=None) -> bool:
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()
        return True

    def is_completed(self) -> bool:
        return self._finish is None


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


_OPS = {
    "SUM": lambda a, b: a.add_(b),
    "PRODUCT": lambda a, b: a.mul_(b),
    "MIN": lambda a, b: torch.minimum(a, b, out=a),
    "MAX": lambda a, b: torch.maximum(a, b, out=a),
    "BAND": lambda a, b: a.bitwise_and_(b),
    "BOR": lambda a, b: a.bitwise_or_(b),
    "BXOR": lambda a, b: a.bitwise_xor_(b),
}


def _reducer(op):
    name = getattr(op, "name", None) or str(op).rsplit(".", 1)[-1]
    try:
        return _OPS[name]
    except KeyError:
        raise TransportError(f"reduce operation {op} is not supported by the secptune transport") from None


class Dist:
    """``torch.distributed`` as CrypTen's communicator and TTP provider use it, over :class:`Transport`."""

    ReduceOp = torch.distributed.ReduceOp

    def __init__(self, network: Network, listener: socket.socket | None = None):
        self.network = network
        self.listener = listener
        self.transport: Transport | None = None
        self.groups: list[Group] = []

    # process groups
    def is_initialized(self) -> bool:
        return self.transport is not None

    def init_process_group(self, backend=None, init_method=None, world_size=-1, rank=-1, timeout=None, **_):
        if int(world_size) != len(ROLES) or int(rank) != self.network.rank:
            raise NetworkConfigError(
                f"this transport runs owner, server and dealer (world size 3, rank {self.network.rank}); "
                f"CrypTen asked for world size {world_size}, rank {rank}"
            )
        transport = Transport(self.network, listener=self.listener)
        self.listener = None  # the transport owns (and closes) it now
        transport.start()
        self.transport = transport
        self.groups = [Group(0, list(range(len(ROLES))))]

    def new_group(self, ranks=None, **_) -> Group:
        group = Group(len(self.groups), list(ranks) if ranks is not None else list(range(len(ROLES))))
        self.groups.append(group)
        return group

    def destroy_process_group(self, group=None) -> None:
        if group is None and self.transport is not None:
            self.transport.close(graceful=True)
            self.transport = None

    def get_rank(self, group=None) -> int:
        return self.network.rank

    def get_world_size(self, group=None) -> int:
        return self._group(group).size()

    def get_backend(self, group=None) -> str:
        return "secptune-tls" if self.network.tls_dir else "secptune-tcp"

    # helpers
    def _group(self, group) -> Group:
        return self.groups[0] if group is None else group

    def _t(self) -> Transport:
        if self.transport is None:
            raise PeerLostError("the secptune transport is not connected")
        return self.transport

    def _others(self, group: Group) -> list[int]:
        return [r for r in group.ranks if r != self.network.rank]

    def _send(self, tensor, dst: int, group: Group) -> None:
        self._t().send(dst, group.id, _as_bytes(tensor))

    def _take(self, src: int, group: Group, slot: int, like: torch.Tensor, kind: str = "message") -> torch.Tensor:
        payload = self._t().take(src, group.id, slot)
        expected = like.numel() * like.element_size()
        if len(payload) != expected:
            raise TransportError(
                f"protocol out of step: expected {expected} bytes from the {ROLES[src]}, got {len(payload)}; "
                "all parties must run the same secptune version"
            )
        if expected == 0:
            out = torch.empty_like(like)
        else:
            out = torch.frombuffer(payload, dtype=like.dtype).view(like.shape)
        if _TAPS:
            _notify(kind, src, group.id, out)
        return out

    def _recv_later(self, tensor, src: int, group: Group):
        slot = self._t().reserve(src, group.id)
        return lambda: tensor.copy_(self._take(src, group, slot, tensor))

    @staticmethod
    def _done(finish, async_op: bool):
        if async_op:
            return _Work(finish)
        if finish is not None:
            finish()
        return None

    # point to point (dst/src are global ranks, as in torch)
    def send(self, tensor, dst, group=None, tag=0):
        self._send(tensor, dst, self._group(group))

    def isend(self, tensor, dst, group=None, tag=0):
        self._send(tensor, dst, self._group(group))
        return _Work()

    def _source(self, src, group: Group) -> int:
        if src is not None:
            return src
        others = self._others(group)
        if len(others) != 1:
            raise TransportError("receiving from any source is not supported by the secptune transport")
        return others[0]

    def recv(self, tensor, src=None, group=None, tag=0):
        group = self._group(group)
        src = self._source(src, group)
        self._recv_later(tensor, src, group)()
        return src

    def irecv(self, tensor, src=None, group=None, tag=0):
        group = self._group(group)
        return _Work(self._recv_later(tensor, self._source(src, group), group))

    # collectives
    def broadcast(self, tensor, src, group=None, async_op=False):
        group = self._group(group)
        if self.network.rank == src:
            for r in self._others(group):
                self._send(tensor, r, group)
            return self._done(None, async_op)
        return self._done(self._recv_later(tensor, src, group), async_op)

    def _combine_later(self, tensor, op, group: Group, sources: list[int]):
        combine = _reducer(op)
        slots = {r: self._t().reserve(r, group.id) for r in sources}
        me = self.network.rank

        def finish():
            parts = {r: self._take(r, group, slots[r], tensor, "reduce_part") for r in sources}
            parts[me] = tensor.clone()
            ranks = sorted(parts)
            acc = parts[ranks[0]].clone()
            for r in ranks[1:]:
                combine(acc, parts[r])  # the same order in every process
            tensor.copy_(acc)
            if _TAPS:
                _notify("opened", sources[0] if len(sources) == 1 else -1, group.id, tensor)

        return finish

    def all_reduce(self, tensor, op=torch.distributed.ReduceOp.SUM, group=None, async_op=False):
        group = self._group(group)
        others = self._others(group)
        for r in others:
            self._send(tensor, r, group)
        return self._done(self._combine_later(tensor, op, group, others), async_op)

    def reduce(self, tensor, dst, op=torch.distributed.ReduceOp.SUM, group=None, async_op=False):
        group = self._group(group)
        if self.network.rank != dst:
            self._send(tensor, dst, group)
            return self._done(None, async_op)
        return self._done(self._combine_later(tensor, op, group, self._others(group)), async_op)

    def all_gather(self, tensor_list, tensor, group=None, async_op=False):
        group = self._group(group)
        for r in self._others(group):
            self._send(tensor, r, group)
        pending = [self._recv_later(tensor_list[group.ranks.index(r)], r, group) for r in self._others(group)]
        tensor_list[group.ranks.index(self.network.rank)].copy_(tensor)
        return self._done(lambda: [f() for f in pending], async_op)

    def gather(self, tensor, gather_list=None, dst=0, group=None, async_op=False):
        group = self._group(group)
        if self.network.rank != dst:
            self._send(tensor, dst, group)
            return self._done(None, async_op)
        pending = [self._recv_later(gather_list[group.ranks.index(r)], r, group) for r in self._others(group)]
        gather_list[group.ranks.index(dst)].copy_(tensor)
        return self._done(lambda: [f() for f in pending], async_op)

    def scatter(self, tensor, scatter_list=None, src=0, group=None, async_op=False):
        group = self._group(group)
        if self.network.rank == src:
            for r in self._others(group):
                self._send(scatter_list[group.ranks.index(r)], r, group)
            tensor.copy_(scatter_list[group.ranks.index(src)])
            return self._done(None, async_op)
        return self._done(self._recv_later(tensor, src, group), async_op)

    def barrier(self, group=None, async_op=False, **_):
        group = self._group(group)
        token = torch.zeros(0, dtype=torch.uint8)
        for r in self._others(group):
            self._send(token, r, group)
        pending = [self._recv_later(torch.zeros(0, dtype=torch.uint8), r, group) for r in self._others(group)]
        return self._done(lambda: [f() for f in pending], async_op)


_INSTALLED: Dist | None = None


def install(network: Network, listener: socket.socket | None = None) -> Dist:
    """Make CrypTen's communicator and TTP provider use this transport (in this process).

    ``listener``: a socket already listening on this party's address (a local run binds
    it in the launcher, so no other process can take the port between choosing and binding).
    """
    global _INSTALLED
    dist = Dist(network.validate(), listener)
    crypten_seam.use_transport(dist)
    _INSTALLED = dist
    return dist


def installed() -> Dist | None:
    return _INSTALLED


def shutdown(graceful: bool = True, reason: str | None = None) -> None:
    """Close this process's channels (after a run; ``graceful=False`` when it failed,
    with ``reason`` — a transport message, never a job's — passed on to the peers)."""
    if _INSTALLED is not None and _INSTALLED.transport is not None:
        _INSTALLED.transport.close(graceful=graceful, reason=reason)
        _INSTALLED.transport = None
