"""Start owner, server and dealer as three fresh local processes and collect results.

Parties are *spawned*, never forked: forking after multi-threaded torch work has
deadlocked the dealer here before, and every process needs the CrypTen shim.
The launcher watches all three; if one dies or reports an error, the others are
stopped at once and the caller gets a :class:`PartyFailedError` naming the party
— never a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from mpc import session


class PartyFailedError(RuntimeError):
    """A party process failed or died; the message is meant for the user."""


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


LOST_CONNECTION = "lost the connection to another party (it stopped, hung, or the network failed)"


def _is_transport_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("gloo" in text or "Connection" in text or "Timed out" in text)


def _report_error(conn, role: str, exc: BaseException) -> None:
    if _is_transport_error(exc):
        detail = LOST_CONNECTION
    elif type(exc).__module__.startswith(("secptune", "mpc")):
        detail = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    conn.send(("error", role, detail, traceback.format_exc()))


def _party_main(role: str, spec: session.SessionSpec, job: PartyJob | None, conn) -> None:
    """Entry point of every spawned party process."""
    from mpc import accounting, reveal

    started = time.perf_counter()
    try:
        if role == "dealer":
            session.run_dealer(spec)
            value = None
        else:
            session.start(spec, role)
            value = job.fn(*job.args)
        log = accounting.log()
        conn.send(
            (
                "ok",
                PartyResult(
                    role=role,
                    value=value,
                    traffic=log.as_dict(),
                    wall_s=time.perf_counter() - started,
                    reveals=reveal.reveals(),
                    audit={"received_elements": log.received_elements, "canary_hits": log.canary_hits},
                ),
            )
        )
        if role != "dealer":
            session.stop()
    except BaseException as exc:  # reported to the launcher, which stops the others
        _report_error(conn, role, exc)
        raise SystemExit(1)
    finally:
        conn.close()


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
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="secptune-rdv-") as rdv:
        spec = session.SessionSpec(
            rendezvous=f"file://{os.path.join(rdv, 'rendezvous')}", timeout_s=peer_timeout_s
        )
        jobs = {"owner": owner, "server": server, "dealer": None}
        pipes, procs = {}, {}
        for role, job in jobs.items():
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_party_main, args=(role, spec, job, child_end), name=f"secptune-{role}"
            )
            proc.start()
            child_end.close()
            pipes[role], procs[role] = parent_end, proc
        grace_s = 0.0
        try:
            results = _collect(pipes, procs, timeout_s)
            grace_s = 10.0  # all reported: let them close their sessions cleanly
            return results
        finally:
            _stop_all(procs, grace_s)


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
                    message = conn.recv()
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
                    message = pipes[role].recv()
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
