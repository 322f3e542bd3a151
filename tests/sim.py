"""Owner, server and dealer in ONE process: the protocol algebra without spawning (test support).

:func:`run` has the signature of :func:`mpc.launcher.run_local` and of the ``mpc_cluster``
fixture's ``run``: ``run(owner_job, server_job, timeout_s)`` -> ``{role: PartyResult}``.  Each
party runs in a thread of this process and goes through what a spawned party process does
(:func:`mpc.session.start` / :func:`~mpc.session.run_dealer`, the job, :func:`~mpc.session.stop`):
the same CrypTen with the same seam (:mod:`mpc.crypten_seam`), the same dealer functions
behind the same allow-list and request-hash check, the same AES-CTR streams keyed from
``os.urandom`` and exchanged over the wire, the same :class:`mpc.transport.Dist` (the
``torch.distributed`` subset CrypTen uses) and the same traffic accounting.  Only the byte
channel under ``Dist`` is in memory (:class:`_MemoryTransport` in place of
:class:`mpc.channels.Transport`): no sockets, no TLS, no processes.

Why not CrypTen's ``InProcessCommunicator`` / ``crypten.init_thread``: it has no third
party (no dealer rank, no TTP groups, so no ``request``), matches receives by arrival order
only, and keeps one ``crypten.generators`` for all threads.

One party at a time.  A party process has its own copy of every module-level variable;
threads share them.  So the parties take turns, like coroutines: exactly one holds the
baton and runs; it hands the baton on only when it waits for a message that has not
arrived (or when it ends), and the per-party state (:data:`_MPC_STATE` and CrypTen's
:data:`mpc.crypten_seam.PARTY_STATE`) is swapped out and in at each hand-over.  A party
that raises stops the run; when no party can run (each waits for a message nobody will
send: a party failed, ended early or asks for more than its peer sends) the waiting
parties raise at once, so a broken protocol fails loudly and deterministically, and a
wall-clock ``timeout_s`` catches a party that loops (its thread is abandoned: a party that gets
the baton afterwards raises without touching the process's state, but code the looping party
runs once it stops looping is beyond reach).  :class:`SimFailed` names the party that failed first.

After a run the process is as before it: CrypTen's patch points, its config, the
per-party state, the environment variables a session sets and torch's
``init_process_group`` are put back.
"""

from __future__ import annotations

import collections
import copy
import itertools
import os
import threading
import time
import traceback
from types import SimpleNamespace

import torch

from mpc import accounting, crypten_seam, dealer, fixed_weights, opened, reveal, ring, session, transport
from mpc.errors import NetworkConfigError, PeerLostError
from mpc.launcher import PartyJob, PartyResult
from mpc.roles import ROLES

import crypten  # noqa: E402  (after mpc: its import stub first)


class SimFailed(RuntimeError):
    """A simulated run failed: a party raised, the parties deadlocked, or it ran too long."""

    def __init__(self, message: str, role: str | None = None):
        super().__init__(message)
        self.role = role


# Module-level state of mpc that each party process holds for itself (what
# mpc.jobstate.reset clears between jobs of a persistent party): name -> a fresh value.
_MPC_STATE = {
    (accounting, "_LOG"): accounting.TrafficLog,
    (accounting, "_SORTED_CANARIES"): dict,
    (reveal, "_REVEALS"): list,
    (ring, "calls"): collections.Counter,
    (dealer, "_CLIENT_CHAIN"): dealer._Chain,
    (dealer, "_PENDING_RELEASE"): list,
    (dealer, "_PENDING_SENDS"): list,
    (opened, "_HANDLES"): itertools.count,
    (opened, "_DEALER_MASKS"): dict,
    (fixed_weights, "_HANDLES"): itertools.count,
    (fixed_weights, "_DEALER_MASKS"): dict,
    (transport, "_TAPS"): list,  # a view recorder taps its own process's arrivals
}
_ENV = ("RANK", "WORLD_SIZE", "RENDEZVOUS", "DISTRIBUTED_BACKEND")  # what mpc.session sets per party


def per_party_names() -> set[str]:
    """``module.name`` of every mpc variable the simulation keeps per party."""
    return {f"{module.__name__}.{name}" for module, name in _MPC_STATE}


def _fresh_state() -> dict:
    state = {key: make() for key, make in _MPC_STATE.items()}
    state["crypten"] = crypten_seam.fresh_party_state()
    return state


def _current_state() -> dict:
    state = {key: getattr(*key) for key in _MPC_STATE}
    state["crypten"] = crypten_seam.party_state()
    return state


def _set_state(state: dict) -> None:
    for (module, name) in _MPC_STATE:
        setattr(module, name, state[(module, name)])
    crypten_seam.set_party_state(state["crypten"])


_LOCAL = threading.local()  # .party: the _Party this thread plays


class _Party:
    def __init__(self, rank: int, target):
        self.rank, self.role, self.target = rank, ROLES[rank], target
        self.state = _fresh_state()
        self.dist = _SimDist(rank)
        self.ready = None  # while waiting: () -> True once the awaited message is there
        self.waiting_for = ""
        self.done = False
        self.result = None
        self.error: BaseException | None = None
        self.trace = ""
        self.thread: threading.Thread | None = None


class _Simulation:
    def __init__(self, targets, timeout_s: float):
        self.cond = threading.Condition()
        self.parties = [_Party(rank, target) for rank, target in enumerate(targets)]
        self.running: _Party | None = None
        self.stopped: str | None = None  # why the run stops (set once)
        self.first_failure: _Party | None = None
        self.abandoned = False  # timed out: a party thread that gets the baton later must not swap state in
        self.mail: dict[tuple, bytearray] = {}  # (src, dst, group, seq) -> payload
        self.sent = collections.Counter()  # (src, dst, group) -> messages sent
        self.timeout_s = timeout_s

    # -- the baton (called with self.cond held) ---------------------------------
    def _next(self, after: _Party) -> _Party | None:
        """The next party in rank order after ``after`` (itself last) that can run."""
        order = self.parties[after.rank + 1 :] + self.parties[: after.rank + 1]
        for party in order:
            if not party.done and (self.stopped or party.ready is None or party.ready()):
                return party
        return None

    def _hand_over(self, party: _Party) -> None:
        nxt = self._next(party)
        if nxt is None and not all(p.done for p in self.parties):
            waits = "; ".join(p.waiting_for for p in self.parties if not p.done)
            self.stopped = self.stopped or f"no party can go on ({waits})"
            nxt = self._next(party)
        self.running = nxt
        self.cond.notify_all()

    def _await_turn(self, party: _Party) -> None:
        while self.running is not party:
            self.cond.wait()

    # -- what a party's transport calls -------------------------------------------
    def check(self, party: _Party) -> None:
        if self.stopped:
            raise PeerLostError(f"the simulation stopped the {party.role}: {self.stopped}")

    def block(self, party: _Party, ready, what: str) -> None:
        """Run the other parties until ``ready()``; raise if the run stops meanwhile."""
        while not ready():
            self.check(party)
            party.state = _current_state()
            with self.cond:
                party.ready, party.waiting_for = ready, what
                self._hand_over(party)
                self._await_turn(party)
                party.ready = None
            if self.abandoned:  # run() has returned and put the caller's state back: touch nothing
                raise PeerLostError(f"the simulation abandoned the {party.role}: {self.stopped}")
            _set_state(party.state)

    def post(self, src: int, dst: int, group: int, payload: bytearray) -> None:
        key = (src, dst, group)
        self.mail[(*key, self.sent[key])] = payload
        self.sent[key] += 1

    # -- a party's thread ----------------------------------------------------------
    def _main(self, party: _Party) -> None:
        with self.cond:
            self._await_turn(party)
        if self.abandoned:
            return
        _LOCAL.party = party
        _set_state(party.state)
        try:
            party.result = party.target()
        except BaseException as exc:  # reported by run()
            party.error, party.trace = exc, traceback.format_exc()
        party.state = _current_state()
        with self.cond:
            party.done = True
            if party.error is not None and not self.stopped:
                self.first_failure = party
                self.stopped = f"the {party.role} raised {type(party.error).__name__}: {party.error}"
            self._hand_over(party)

    def run(self) -> dict[str, PartyResult]:
        for party in self.parties:
            party.thread = threading.Thread(target=self._main, args=(party,), name=f"sim-{party.role}", daemon=True)
            party.thread.start()
        with self.cond:
            self.running = self.parties[0]
            self.cond.notify_all()
        deadline = time.monotonic() + self.timeout_s
        for party in self.parties:
            party.thread.join(max(0.0, deadline - time.monotonic()))
        late = [p.role for p in self.parties if p.thread.is_alive()]
        if late:
            with self.cond:
                self.stopped = self.stopped or f"the run took longer than {self.timeout_s:g} s"
                self.abandoned = True
                self.cond.notify_all()
            raise SimFailed(f"simulated run did not end within {self.timeout_s:g} s (still running: {', '.join(late)})")
        failed = self.first_failure or next((p for p in self.parties if p.error is not None), None)
        if failed is not None:
            raise SimFailed(f"the {failed.role} failed: {type(failed.error).__name__}: {failed.error}\n{failed.trace}",
                            failed.role) from failed.error
        return {p.role: p.result for p in self.parties}


class _ThreadDist:
    """Installed in CrypTen as ``dist``: each call goes to the calling party's :class:`_SimDist`."""

    def __getattr__(self, name):
        return getattr(_LOCAL.party.dist, name)


class _SimDist(transport.Dist):
    """secptune's ``torch.distributed`` stand-in, unchanged, over an in-memory channel."""

    def __init__(self, rank: int):
        super().__init__(SimpleNamespace(rank=rank, tls_dir=None))

    def init_process_group(self, backend=None, init_method=None, world_size=-1, rank=-1, timeout=None, **_):
        if int(world_size) != len(ROLES) or int(rank) != self.network.rank:
            raise NetworkConfigError(f"simulated rank {self.network.rank} of 3; CrypTen asked for {rank} of {world_size}")
        self.transport = _MemoryTransport(self.network.rank)
        self.groups = [transport.Group(0, list(range(len(ROLES))))]

    def get_backend(self, group=None) -> str:
        return "secptune-sim"


class _MemoryTransport:
    """The three calls :class:`mpc.transport.Dist` makes of :class:`mpc.channels.Transport`."""

    def __init__(self, rank: int):
        self.rank = rank
        self.reserved = collections.Counter()

    @staticmethod
    def _party() -> _Party:
        return _LOCAL.party

    def send(self, dst: int, group: int, payload) -> None:
        party = self._party()
        party.sim.check(party)
        party.sim.post(self.rank, dst, group, bytearray(payload))  # a copy, as a socket makes

    def reserve(self, src: int, group: int) -> int:
        seq = self.reserved[(src, group)]
        self.reserved[(src, group)] += 1
        return seq

    def take(self, src: int, group: int, slot: int) -> bytearray:
        party = self._party()
        key = (src, self.rank, group, slot)
        mail = party.sim.mail
        party.sim.block(party, lambda: key in mail,
                        f"the {party.role} waits for message {slot} of group {group} from the {ROLES[src]}")
        return mail.pop(key)

    def close(self, graceful: bool = True, reason: str | None = None) -> None:
        pass


def _computing(role: str, spec: session.SessionSpec, job: PartyJob):
    def target() -> PartyResult:
        started = time.perf_counter()
        session.start(spec, role)
        value = job.fn(*job.args)
        log = accounting.log()
        result = PartyResult(role=role, value=value, traffic=log.as_dict(), wall_s=time.perf_counter() - started,
                             reveals=reveal.reveals(), audit=log.audit_summary())
        session.stop()
        return result

    return target


def _dealer(spec: session.SessionSpec):
    def target() -> PartyResult:
        started = time.perf_counter()
        session.run_dealer(spec)
        log = accounting.log()
        return PartyResult(role="dealer", traffic=log.as_dict(), wall_s=time.perf_counter() - started,
                           audit=log.audit_summary())

    return target


def run(owner: PartyJob, server: PartyJob, timeout_s: float = 60.0) -> dict[str, PartyResult]:
    """One two-party computation with its dealer, all three in this process (see the module
    docstring); returns each role's :class:`~mpc.launcher.PartyResult`, raises :class:`SimFailed`."""
    spec = session.SessionSpec(rendezvous="sim://in-process", timeout_s=timeout_s)
    sim = _Simulation([_computing("owner", spec, owner), _computing("server", spec, server), _dealer(spec)], timeout_s)
    for party in sim.parties:
        party.sim = sim
    outer = _current_state()
    seam = crypten_seam.snapshot()
    config = copy.deepcopy(crypten.cfg.config)
    env = {key: os.environ.get(key) for key in _ENV}
    init_process_group = torch.distributed.init_process_group  # mpc.session's peer_timeout wraps it per party
    crypten_seam.use_transport(_ThreadDist())
    try:
        return sim.run()
    finally:
        _set_state(outer)
        crypten_seam.restore(seam)
        crypten.cfg.set_config(config)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.distributed.init_process_group = init_process_group


def run_fn(fn, *args, timeout_s: float = 60.0):
    """``fn(*args)`` as both computing parties' job; returns the owner's value."""
    job = PartyJob(fn, args)
    return run(job, job, timeout_s)["owner"].value
