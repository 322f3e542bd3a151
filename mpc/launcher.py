"""Start owner, server and dealer as fresh processes and collect results.

Parties are *spawned*, never forked: forking after multi-threaded torch work has
deadlocked the dealer here before, and every process needs the CrypTen shim.

* :func:`run_local`: all three on this machine, over the same TLS transport as
  across hosts, bound to 127.0.0.1 with keys made for this run only (so another
  local user cannot take a role).  The launcher watches all three; if one dies or
  reports an error, the others are stopped at once and the caller gets a
  :class:`PartyFailedError` naming the party — never a hang.
* :class:`LocalCluster`: the same three started once, then running many jobs
  (the test suite), each a fresh session on processes that have done their imports.
* :func:`run_party`: this host's one party of a run across machines, over the TLS
  transport of :mod:`mpc.transport` (a :class:`mpc.net.Network` says where the
  others are).  Nobody watches the other hosts' processes here: the transport
  turns a dead, hung or unreachable peer into a :class:`PartyFailedError` within
  the network's timeouts.  The party process dies with its parent (Linux), so a
  killed command leaves no party behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mpc import accounting, jobstate, reveal, session, tls, transport
from mpc.errors import PartyFailedError, PeerLostError, PeerTimeoutError, StartupError, TransportError
from mpc.net import Address, Network, check_listen
from mpc.roles import ROLES


@dataclass
class PartyJob:
    """What one computing party runs once the session is up: ``fn(*args)``.

    ``fn`` must be an importable module-level function (it crosses a spawn).
    Only the arguments given here reach that party's process.
    """

    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class PartyResult:
    role: str
    value: Any = None
    traffic: dict = field(default_factory=dict)
    wall_s: float = 0.0
    reveals: list = field(default_factory=list)
    audit: dict = field(default_factory=dict)


def _send(conn, message) -> None:
    """Results cross as plain pickles: torch's fd-sharing pickler would need the child
    alive until the parent has read them, and a party may exit right after sending."""
    conn.send_bytes(pickle.dumps(message))


def _recv(conn):
    return pickle.loads(conn.recv_bytes())


LOST_CONNECTION = "lost the connection to another party (it stopped, hung, or the network failed)"


def _is_transport_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("gloo" in text or "Connection" in text or "Timed out" in text)


def _is_local_symptom(exc: BaseException) -> bool:
    """In a local run a lost or silent peer is a symptom: the launcher names the party that died."""
    return isinstance(exc, (PeerLostError, PeerTimeoutError, StartupError))


def _report_error(conn, role: str, exc: BaseException, local: bool = False) -> None:
    if _is_transport_error(exc) or (local and _is_local_symptom(exc)):
        detail = LOST_CONNECTION
    elif type(exc).__module__.startswith(("secptune", "mpc")):
        detail = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    _send(conn, ("error", role, detail, traceback.format_exc()))


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: SIGKILL this process when its parent dies, so no party outlives its command."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed


def _party_main(role: str, spec: session.SessionSpec, job: PartyJob | None, conn, network=None,
                parent_pid: int | None = None, listener: socket.socket | None = None) -> None:
    """Entry point of every spawned party process (``network``: where the parties are;
    ``listener``: this party's socket, bound by the launcher of a local run)."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    try:
        if not _serve_job(role, spec, job, conn, network, listener):
            raise SystemExit(1)
    finally:
        conn.close()


def _serve_job(role: str, spec: session.SessionSpec, job: PartyJob | None, conn, network=None,
               listener: socket.socket | None = None) -> bool:
    """Run this party's part of one job and report it on ``conn``; False if it failed
    (the failure is reported; this process's session is then unusable)."""
    started = time.perf_counter()
    finished, reason = False, None
    try:
        if network is not None:
            transport.install(network, listener)
        if role == "dealer":
            value = session.run_dealer(spec)  # None, or its profile (mpc.profiling)
        else:
            session.start(spec, role)
            value = job.fn(*job.args)
        log = accounting.log()
        _send(
            conn,
            (
                "ok",
                PartyResult(
                    role=role,
                    value=value,
                    traffic=log.as_dict(),
                    wall_s=time.perf_counter() - started,
                    reveals=reveal.reveals(),
                    audit=log.audit_summary(),
                ),
            )
        )
        if role != "dealer":
            session.stop()
        finished = True
    except BaseException as exc:  # reported to the launcher, which stops the others
        _report_error(conn, role, exc, local=listener is not None)
        if network is not None:
            # a network problem is passed on so the peers can name the cause; a job's
            # error is not (its text may describe this party's private inputs)
            reason = str(exc) if isinstance(exc, TransportError) else None
        return False
    finally:
        if network is not None:
            transport.shutdown(graceful=finished, reason=reason)  # no goodbye after a failure: peers stop at once
    return True


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def local_party_threads() -> int:
    """Threads per party process when owner, server and dealer share this machine: half its
    cores.  The two computing parties run the same local work at the same time, so each with
    every core oversubscribes the machine (torch and OpenBLAS workers then spin and wait on each
    other; a SmolLM2 forward took 2x as long)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


@contextlib.contextmanager
def _local_threads():
    """Parties spawned inside read their thread counts from here (torch and numpy read them at
    import); a thread count the user set (OMP_NUM_THREADS) is kept."""
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    saved = {name: os.environ.get(name) for name in THREAD_VARS}
    os.environ.update({name: str(local_party_threads()) for name in THREAD_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stop_all(procs: dict[str, mp.Process], grace_s: float = 0.0) -> None:
    """Let finished parties exit on their own for ``grace_s``, then stop the rest."""
    deadline = time.monotonic() + grace_s
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1)


def run_local(
    owner: PartyJob,
    server: PartyJob,
    timeout_s: float = 3600.0,
    peer_timeout_s: float = 120.0,
) -> dict[str, PartyResult]:
    """Run one two-party computation with a dealer, all on this machine.

    Returns the :class:`PartyResult` of each role.  Raises PartyFailedError if any
    party fails, dies, or the whole run exceeds ``timeout_s``.

    The parties talk over :mod:`mpc.transport` with TLS on 127.0.0.1, as across
    hosts: any local process can reach a loopback port, so the address alone
    authenticates nobody (gloo, used here before, let whoever joined first take a
    role).  Each run makes a key pair per role in its own temporary directory (mode
    0700, deleted afterwards) and pins the three certificates, so a connection is
    accepted only from a process holding one of this run's keys.  TLS rather than a
    shared secret: it is the transport's tested path, keeps shares confidential from
    anyone who can read loopback traffic, and the three EC keys (openssl) cost 0.03-0.2 s.
    The launcher binds the three listening sockets itself (port 0) and hands each
    party its socket, so no other process can take a port between choosing and binding.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="secptune-run-") as run_dir:
        os.chmod(run_dir, 0o700)  # the keys of this run: readable by this user only
        try:
            key_dirs = tls.role_dirs(Path(run_dir) / "tls")
        except TransportError as exc:
            raise PartyFailedError(f"cannot make this run's keys: {exc}") from exc
        listeners = {role: _loopback_listener() for role in ROLES}
        peers = tuple(Address("127.0.0.1", listeners[role].getsockname()[1]) for role in ROLES)
        jobs = {"owner": owner, "server": server, "dealer": None}
        pipes, procs = {}, {}
        try:
            for role, job in jobs.items():
                network, spec = _local_network(peers, role, key_dirs[role], peer_timeout_s)
                parent_end, child_end = ctx.Pipe(duplex=False)
                proc = ctx.Process(  # parent_pid: a killed command takes its parties with it
                    target=_party_main,
                    args=(role, spec, job, child_end, network, os.getpid(), listeners[role]),
                    name=f"secptune-{role}",
                )
                with _local_threads():
                    proc.start()
                child_end.close()
                listeners.pop(role).close()  # the party holds its own copy now
                pipes[role], procs[role] = parent_end, proc
        except BaseException:
            _stop_all(procs)
            raise
        finally:
            for sock in listeners.values():
                sock.close()
        grace_s = 0.0
        try:
            results = _collect(pipes, procs, timeout_s)
            grace_s = 10.0  # all reported: let them close their sessions cleanly
            return results
        finally:
            _stop_all(procs, grace_s)


def _local_network(peers: tuple, role: str, key_dir, peer_timeout_s: float):
    """``role``'s :class:`mpc.net.Network` and session spec of a run on this machine (TLS, pinned keys)."""
    network = Network(peers, role, tls_dir=str(key_dir), connect_timeout_s=peer_timeout_s,
                      peer_timeout_s=peer_timeout_s)
    return network, session.SessionSpec(rendezvous=network.describe(), timeout_s=peer_timeout_s)


class LocalCluster:
    """Owner, server and dealer started once on this machine, then running many jobs.

    For callers that run many short two-party jobs (the test suite): a spawned
    party spends seconds importing torch, CrypTen and transformers, often more
    than the job.  Each :meth:`run` is still a whole session as in
    :func:`run_local` — new TLS connections on new loopback ports, ``crypten.init``
    with fresh AES keys, a fresh dealer — and between jobs every party clears what
    a job leaves behind (:func:`mpc.jobstate.reset`), so results, bytes and rounds
    are those of fresh processes.  The TLS keys are made per :meth:`start` (mode
    0700 directory, deleted on :meth:`close`).  A job that fails or times out
    stops all three parties (a failed session cannot be trusted to be clean); the
    next job starts new ones.  Each job gets the caller's environment as it is when the
    job is submitted; ``sys.path`` is the one the parties were spawned with.
    """

    def __init__(self, peer_timeout_s: float = 120.0, start_timeout_s: float = 300.0, log=None):
        self.peer_timeout_s = peer_timeout_s
        self.start_timeout_s = start_timeout_s
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.starts = 0  # how many times the parties were started
        self.leftovers: dict[str, dict] = {}  # per role: mpc.jobstate.leftovers() before the last job
        self._dir: tempfile.TemporaryDirectory | None = None
        self._pipes: dict = {}
        self._procs: dict[str, mp.Process] = {}
        self._stopped_because: str | None = None

    @property
    def key_dir(self) -> Path | None:
        """This start's TLS keys (None while stopped)."""
        return None if self._dir is None else Path(self._dir.name) / "tls"

    def start(self) -> None:
        """Spawn the three parties with new TLS keys (they import CrypTen while the caller goes on)."""
        if self._procs:
            return
        if self._stopped_because:
            self.log(f"secptune cluster: starting owner, server and dealer again (the last job failed: "
                     f"{self._stopped_because})")
        self._stopped_because = None
        self._dir = tempfile.TemporaryDirectory(prefix="secptune-cluster-")
        os.chmod(self._dir.name, 0o700)
        try:
            tls.role_dirs(self.key_dir)
        except TransportError as exc:
            self.close()
            raise PartyFailedError(f"cannot make the cluster's keys: {exc}") from exc
        ctx = mp.get_context("spawn")
        for role in ROLES:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_cluster_party_main, args=(role, child_end, os.getpid()),
                               name=f"secptune-cluster-{role}")
            with _local_threads():
                proc.start()
            child_end.close()
            self._pipes[role], self._procs[role] = parent_end, proc
        self.starts += 1

    def run(self, owner: PartyJob, server: PartyJob, timeout_s: float = 3600.0) -> dict[str, PartyResult]:
        """Run one job as :func:`run_local` does (same results and errors) on the running parties."""
        self.start()
        try:
            try:
                ports = self._bind()
            except PartyFailedError as exc:  # the last job's clean-up failed: no job of this one has run
                self.log(f"secptune cluster: the parties were not ready for a new job ({exc}); starting new ones")
                self.close(grace_s=0.0)
                self.start()
                ports = self._bind()
            peers = tuple(Address("127.0.0.1", ports[role]) for role in ROLES)
            context = (dict(os.environ),)
            for role, job in {"owner": owner, "server": server, "dealer": None}.items():
                network, spec = _local_network(peers, role, self.key_dir / role, self.peer_timeout_s)
                _send(self._pipes[role], ("run", spec, network, pickle.dumps(job), *context))
            return _collect(self._pipes, self._procs, timeout_s)
        except BaseException as exc:
            self._stopped_because = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.log(f"secptune cluster: a job failed ({self._stopped_because}); owner, server and dealer "
                     "were stopped, the next job starts new ones")
            self.close(grace_s=0.0)
            raise

    def _bind(self) -> dict[str, int]:
        """Each party opens a new loopback listener for the next job; returns the ports."""
        for role, conn in self._pipes.items():
            try:
                _send(conn, ("bind",))
            except OSError:  # its end of the pipe is gone
                raise PartyFailedError(_death_message(role, self._procs[role])) from None
        ports = {}
        deadline = time.monotonic() + self.start_timeout_s
        for role, conn in self._pipes.items():
            while not conn.poll(0.05):
                if not self._procs[role].is_alive():
                    raise PartyFailedError(_death_message(role, self._procs[role]))
                if time.monotonic() > deadline:
                    raise PartyFailedError(f"the {role} process did not get ready within {self.start_timeout_s:.0f} s")
            message = _recv(conn)
            if message[0] != "port":
                raise PartyFailedError(f"the {role} process failed: {_detail(message)}")
            ports[role], self.leftovers[role] = message[1], message[2]
        return ports

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the three parties (after ``grace_s`` to exit on their own) and delete this start's keys."""
        for conn in self._pipes.values():
            try:
                _send(conn, ("close",))
            except OSError:
                pass  # already gone
        _stop_all(self._procs, grace_s)
        for conn in self._pipes.values():
            conn.close()
        self._pipes, self._procs = {}, {}
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cluster_party_main(role: str, conn, parent_pid: int) -> None:
    """One persistent party of a :class:`LocalCluster`: bind, run a job, clear its traces, repeat."""
    _die_with_parent(parent_pid)
    jobstate.remember_baseline()
    listener = None
    try:
        while True:
            try:
                message = _recv(conn)
            except EOFError:
                break  # the launcher went away
            if message[0] == "bind":
                if listener is not None:
                    listener.close()
                listener = _loopback_listener()
                _send(conn, ("port", listener.getsockname()[1], jobstate.leftovers()))
            elif message[0] == "run":
                _, spec, network, payload, env = message
                os.environ.clear()
                os.environ.update(env)
                try:
                    job = pickle.loads(payload)
                except BaseException as exc:
                    _report_error(conn, role, exc, local=True)
                    raise SystemExit(1)
                ok = _serve_job(role, spec, job, conn, network, listener)
                listener = None  # the job's transport owned and closed it
                if not ok:
                    raise SystemExit(1)
                jobstate.reset()
            else:
                break
    finally:
        conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # told to stop: nothing left to clean up (an orderly interpreter exit takes seconds)


def _loopback_listener() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1 only (never the host's other addresses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _collect(pipes, procs, timeout_s: float) -> dict[str, PartyResult]:
    results: dict[str, PartyResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < len(procs):
        if time.monotonic() > deadline:
            raise PartyFailedError(f"the secure run took longer than {timeout_s:.0f} s and was stopped")
        for role, conn in pipes.items():
            if role in results:
                continue
            if conn.poll(0.05):
                try:
                    message = _recv(conn)
                except EOFError:
                    message = None
                if message and message[0] == "ok":
                    results[role] = message[1]
                    continue
                if message and message[0] == "error":
                    _raise_if_another_died(pipes, procs, results, role)
                    raise PartyFailedError(f"the {role} process failed: {_detail(message)}")
                raise PartyFailedError(_death_message(role, procs[role]))
            if not procs[role].is_alive() and not conn.poll(0):
                raise PartyFailedError(_death_message(role, procs[role]))
    return results


def _raise_if_another_died(pipes, procs, results, reporter: str, grace_s: float = 2.0) -> None:
    """A lost connection is usually a symptom: name the party that actually died."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for role, proc in procs.items():
            if role == reporter or role in results:
                continue
            if proc.is_alive() or proc.exitcode in (0, None):
                continue
            message = None
            if pipes[role].poll(0):
                try:
                    message = _recv(pipes[role])
                except EOFError:
                    pass
            if message is None:
                raise PartyFailedError(_death_message(role, proc))
            if message[0] == "error" and message[2] != LOST_CONNECTION:
                raise PartyFailedError(f"the {role} process failed: {_detail(message)}")
        time.sleep(0.05)


def _detail(message) -> str:
    _, _, detail, trace = message
    return detail + ("\n" + trace if os.environ.get("SECPTUNE_DEBUG") else "")


def _death_message(role: str, proc: mp.Process) -> str:
    proc.join(1)
    return (
        f"the {role} process died unexpectedly (exit code {proc.exitcode}); "
        "the other parties were stopped — rerun, and check memory if this repeats"
    )


def start_party(role: str, network, job: PartyJob | None = None):
    """Spawn this host's ``role`` process of a multi-host run; returns (process, result pipe)."""
    ctx = mp.get_context("spawn")
    spec = session.SessionSpec(rendezvous=network.describe(), timeout_s=network.peer_timeout_s)
    parent_end, child_end = ctx.Pipe(duplex=False)
    # the job travels as bytes, so the child arms its parent-death signal before the
    # job's modules (torch, CrypTen, the model code) are imported
    payload = pickle.dumps((spec, job, network))
    proc = ctx.Process(
        target=_network_party_main, args=(role, payload, child_end, os.getpid()), name=f"secptune-{role}"
    )
    proc.start()
    child_end.close()
    return proc, parent_end


def _network_party_main(role: str, payload: bytes, conn, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    spec, job, network = pickle.loads(payload)
    _party_main(role, spec, job, conn, network)


def run_party(role: str, network, job: PartyJob | None = None, timeout_s: float | None = None) -> PartyResult:
    """Run this host's party of a run across machines (``network``: a :class:`mpc.net.Network`).

    Blocks until the run ends.  Raises PartyFailedError with the party's own
    one-line reason (a peer lost or silent, a start-up problem, a failed job), or
    when the run exceeds ``timeout_s``.
    """
    check_listen(network.validate())
    proc, conn = start_party(role, network, job)
    grace_s = 0.0
    try:
        result = _wait_one(role, proc, conn, timeout_s)
        grace_s = 10.0  # it reported: let it close its channels cleanly
        return result
    finally:
        _stop_all({role: proc}, grace_s)


def wait_party(role: str, proc, conn, timeout_s: float | None = None) -> PartyResult:
    """The result of a party started with :func:`start_party` (raises PartyFailedError)."""
    return _wait_one(role, proc, conn, timeout_s)


def stop_party(proc, grace_s: float = 0.0) -> None:
    """Let a started party exit on its own for ``grace_s``, then stop it."""
    _stop_all({"party": proc}, grace_s)


def _wait_one(role: str, proc, conn, timeout_s: float | None) -> PartyResult:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise PartyFailedError(f"the secure run took longer than {timeout_s:.0f} s and was stopped")
        if conn.poll(0.1):
            try:
                message = _recv(conn)
            except EOFError:
                message = None
            if message and message[0] == "ok":
                return message[1]
            if message and message[0] == "error":
                raise PartyFailedError(_detail(message))
            raise PartyFailedError(_death_message(role, proc))
        if not proc.is_alive() and not conn.poll(0):
            raise PartyFailedError(_death_message(role, proc))
