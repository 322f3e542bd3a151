"""A local run authenticates its parties: another local process cannot take a role.

Any local user can connect to a loopback port, so :func:`mpc.launcher.run_local`
pins per-run TLS certificates.  The evidence: an intruder process that knows the
run's ports and claims every role on each of them — before the real parties have
met and again while they are connected — is refused everywhere, and the run still
computes the right answer.  The same intruder takes a role from a listener that
does not authenticate (the transport with ``--no-tls``), so the test can fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from mpc import launcher
from mpc.transport import Transport

import deploy_parties
from deploy_parties import free_ports, loopback_peers, network

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make keys")

TESTS = Path(__file__).resolve().parent


def _start_intruder(tmp_path: Path, ready_files=(), version: str = "") -> tuple[subprocess.Popen, Path, Path]:
    """A second local process (not a child of any party) running deploy_parties.intrude."""
    ports_file, out_file = tmp_path / "ports.json", tmp_path / "intruder.json"
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import deploy_parties; "
        f"deploy_parties.intrude({str(ports_file)!r}, {str(out_file)!r}, {[str(p) for p in ready_files]!r}, "
        f"{version!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    return proc, ports_file, out_file


def _intruder_rounds(proc: subprocess.Popen, out_file: Path, timeout_s: float = 180) -> list[list[dict]]:
    assert proc.wait(timeout=timeout_s) == 0, "the intruder process failed"
    return json.loads(out_file.read_text())


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _listening(pids) -> list:
    found = []
    for pid in pids:
        try:
            found += [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_an_intruder_cannot_take_a_role_of_a_local_run(tmp_path, no_leftover_processes):
    ready = {role: tmp_path / f"ready-{role}" for role in ("owner", "server")}
    go = tmp_path / "go"
    intruder, ports_file, out_file = _start_intruder(tmp_path, ready_files=list(ready.values()))
    secret = torch.arange(16, dtype=torch.float64) * 0.5 - 3.0
    outcome: dict = {}

    def run():
        try:
            outcome["results"] = launcher.run_local(
                launcher.PartyJob(deploy_parties.open_secret_when, (secret, (16,), str(ready["owner"]), str(go))),
                launcher.PartyJob(deploy_parties.open_secret_when, (None, (16,), str(ready["server"]), str(go))),
                timeout_s=240,
            )
        except BaseException as exc:  # inspected below
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    try:
        armed = Path(f"{out_file}.armed")
        deadline = time.monotonic() + 60
        while not armed.exists() and intruder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert armed.exists(), "the intruder did not start"
        me = psutil.Process()
        earlier = {p.pid for p in me.children()}  # e.g. the session's cluster (tests/conftest.py)
        runner.start()  # the intruder strikes as soon as the ports are known: before the parties meet
        parties: list = []
        deadline = time.monotonic() + 60
        while len(parties) < 3 and time.monotonic() < deadline:
            parties = [p for p in me.children() if p.pid not in earlier and "spawn_main" in " ".join(_cmdline(p))]
            time.sleep(0.01)
        assert len(parties) == 3, "the three party processes did not start"
        ports: set = set()
        while len(ports) < 3 and time.monotonic() < deadline:
            ports = {a.port for a in _listening([p.pid for p in parties])}
            time.sleep(0.01)
        assert len(ports) == 3, ports
        ports_file.write_text(json.dumps(sorted(ports)))  # the intruder attacks now, parties still starting

        while not all(p.exists() for p in ready.values()) and runner.is_alive():
            time.sleep(0.05)
        assert "error" not in outcome, outcome.get("error")
        listening = _listening([p.pid for p in parties])
        assert {a.ip for a in listening} == {"127.0.0.1"}, listening  # loopback only, and no other listener
        assert {a.port for a in listening} == ports, listening
        rounds = _intruder_rounds(intruder, out_file)
    finally:
        go.write_text("go")
        runner.join(240)
        if intruder.poll() is None:
            intruder.kill()
    assert not runner.is_alive(), "the run did not end"
    assert "error" not in outcome, outcome.get("error")
    assert len(rounds) == 2 and all(len(r) == 3 * 3 * 2 for r in rounds), rounds
    taken = [r for tries in rounds for r in tries if r["accepted"]]
    assert taken == [], taken
    undecided = [r for tries in rounds for r in tries if "timed out" in r["answer"]]
    assert undecided == [], undecided  # every try reached a party and was turned away
    results = outcome["results"]
    assert torch.equal(results["owner"].value["plain"], secret)
    assert torch.equal(results["server"].value["plain"], secret)
    assert results["owner"].traffic["online"]["rounds"] > 0


def test_the_intruder_takes_a_role_from_a_listener_without_authentication(tmp_path):
    """Positive control: the same intruder against the transport with --no-tls on loopback."""
    peers = loopback_peers(free_ports(3))
    victim = Transport(network("server", peers, None, connect_timeout_s=60.0, version=""), log=lambda message: None)
    failed: dict = {}

    def start():
        try:
            victim.start()
        except Exception as exc:  # expected: the intruder goes away again
            failed["error"] = exc

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    intruder, ports_file, out_file = _start_intruder(tmp_path)
    try:
        ports_file.write_text(json.dumps([peers[1].port]))
        (tries,) = _intruder_rounds(intruder, out_file)
    finally:
        if intruder.poll() is None:
            intruder.kill()
        thread.join(30)
        victim.close(graceful=False)
    taken = {(r["role"], r["tls"]) for r in tries if r["accepted"]}
    assert ("owner", False) in taken, [(r["role"], r["tls"], r["answer"]) for r in tries]  # it now holds the owner's channel into the server
    assert not any(r["tls"] for r in tries if r["accepted"]), tries
