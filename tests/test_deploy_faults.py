"""Faults in a run across hosts end in a plain error within a stated time, and leave no process behind.

Parties here are separate processes that know each other only by address (as on
three hosts): nobody watches another's process, only the transport can notice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mpc import launcher
from mpc.errors import PeerTimeoutError
from mpc.transport import Dist
from secptune.cli import main

import deploy_parties
from deploy_parties import ROLES, Relay, free_ports, loopback_peers, network

PEER_TIMEOUT_S = 3.0


def _run_with_failing_server(what: str, stamp: Path):
    """Owner, server and dealer; the server dies or freezes after a few products.
    Returns the owner's and the dealer's errors, the seconds from the fault to the
    owner's error, and whether the server process was still there (frozen) then."""
    peers = loopback_peers(free_ports(3))
    nets = {role: network(role, peers, peer_timeout_s=PEER_TIMEOUT_S) for role in ROLES}
    server = launcher.start_party("server", nets["server"],
                                  launcher.PartyJob(deploy_parties.compute_then, (5, what, str(stamp))))
    dealer = launcher.start_party("dealer", nets["dealer"], None)
    try:
        with pytest.raises(launcher.PartyFailedError) as failure:
            launcher.run_party("owner", nets["owner"], launcher.PartyJob(deploy_parties.compute_forever), 300)
        delay = time.time() - float(stamp.read_text())
        server_there = server[0].is_alive()
        with pytest.raises(launcher.PartyFailedError) as dealer_failure:
            launcher.wait_party("dealer", *dealer, timeout_s=2 * PEER_TIMEOUT_S + 5)
        return str(failure.value), str(dealer_failure.value), delay, server_there
    finally:
        launcher.stop_party(dealer[0])
        if server[0].is_alive():
            os.kill(server[0].pid, signal.SIGKILL)  # a stopped process ignores everything else
        launcher.stop_party(server[0])


def test_a_server_that_dies_stops_the_owner_and_the_dealer_at_once(tmp_path, no_leftover_processes):
    owner_error, dealer_error, delay, server_there = _run_with_failing_server("exit", tmp_path / "t")
    assert "lost the connection to the server at 127.0.0.1" in owner_error, owner_error
    assert "it stopped, or the network failed" in owner_error
    assert delay < 3.0  # noticed at once, not after the peer timeout
    assert not server_there and "server" in dealer_error


def test_a_hung_server_stops_the_run_within_the_peer_timeout(tmp_path, no_leftover_processes):
    owner_error, dealer_error, delay, server_there = _run_with_failing_server("stop", tmp_path / "t")
    assert "the server at 127.0.0.1" in owner_error and "sent nothing for" in owner_error, owner_error
    assert f"--peer-timeout {PEER_TIMEOUT_S:g} s" in owner_error
    assert server_there  # it really hung rather than died
    assert PEER_TIMEOUT_S - 0.5 < delay < PEER_TIMEOUT_S + 3.0
    assert "server" in dealer_error


def test_a_cut_network_stops_the_run_within_the_peer_timeout():
    """The server's host drops off the network: packets vanish both ways, nothing is refused."""
    ports = free_ports(3)
    relays = [Relay(port) for port in ports]  # one in front of each party
    for relay in relays:
        relay.start()
    direct = loopback_peers(ports)
    to_server = loopback_peers([ports[0], relays[1].port, ports[2]])  # owner and dealer reach the server via a relay
    from_server = loopback_peers([relays[0].port, ports[1], relays[2].port])  # the server reaches them via relays
    errors, took = {}, {}

    def party(role):
        peers = from_server if role == "server" else to_server
        # the dealer notices the lost server too; a longer limit there keeps the owner's report its own
        timeout = PEER_TIMEOUT_S * (2 if role == "dealer" else 1)
        d = Dist(network(role, peers, listen=direct[ROLES.index(role)], peer_timeout_s=timeout))
        reason = None
        try:
            d.init_process_group("gloo", "unused", 3, ROLES.index(role))
            main_group = d.new_group([0, 1])
            if role == "dealer":
                d.recv(torch.zeros(1), 0)  # idle until the run ends
                return
            for step in range(100_000):
                if step == 20 and role == "owner":
                    took["cut"] = time.monotonic()
                    for relay in relays:
                        relay.freeze()
                d.all_reduce(torch.ones(1000, dtype=torch.long), group=main_group)
        except Exception as exc:  # inspected below
            errors[role], took[role], reason = exc, time.monotonic(), str(exc)
        finally:
            if d.transport is not None:
                d.transport.close(graceful=False, reason=reason)  # as the launcher does

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in ROLES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for relay in relays:
        relay.close()
    assert isinstance(errors.get("owner"), PeerTimeoutError), errors
    assert "the server at 127.0.0.1" in str(errors["owner"]) and "sent nothing for" in str(errors["owner"])
    assert PEER_TIMEOUT_S - 0.5 < took["owner"] - took["cut"] < PEER_TIMEOUT_S + 2
    assert isinstance(errors.get("server"), PeerTimeoutError) and "owner" in str(errors["server"])
    assert "server" in str(errors.get("dealer"))


# -- reported plainly at start-up (command line) ------------------------------------------
def _one_error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("secptune: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_port_in_use_is_reported_at_start_up(capsys):
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        ports = free_ports(2)
        peers = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},127.0.0.1:{holder.getsockname()[1]}"
        started = time.monotonic()
        assert main(["party", "--role", "dealer", "--peers", peers, "--no-tls"]) == 2
        assert time.monotonic() - started < 5
    finally:
        holder.close()
    assert "the port is in use" in _one_error_line(capsys)


def test_network_options_that_cannot_work_are_reported(capsys):
    assert main(["party", "--role", "server", "--model", "tiny-llama", "--peers",
                 "10.0.0.1:1,10.0.0.2:2,10.0.0.3:3", "--no-tls"]) == 2
    assert "--no-tls is for loopback addresses only" in _one_error_line(capsys)
    assert main(["party", "--role", "dealer", "--peers", "127.0.0.1:1,127.0.0.1:2"]) == 2
    assert "three addresses" in _one_error_line(capsys)
    assert main(["party", "--role", "dealer", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"]) == 2
    assert "--tls-dir" in _one_error_line(capsys)
    assert main(["party", "--role", "server", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--no-tls"]) == 2
    assert "--model" in _one_error_line(capsys)
    assert main(["party", "--role", "owner", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--no-tls"]) == 2
    assert "infer|tune" in _one_error_line(capsys)
    assert main(["infer", "--model", "tiny-llama", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--no-tls"]) == 2
    assert "--mode secure" in _one_error_line(capsys)


def _infer_args(data: Path, model: str = "tiny-llama") -> list[str]:
    return ["infer", "--model", model, "--data", str(data), "--template", "{text} It was {mask}",
            "--verbalizer", "terrible,great", "--mode", "secure", "--limit", "2", "--batch-size", "2"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "a great movie", "label": 1}, {"text": "a terrible plot", "label": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_wrong_server_address_is_reported_at_start_up(capsys, data_file, no_leftover_processes):
    peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))  # nobody listens there
    started = time.monotonic()
    # the owner role of `secptune party` runs the owner's infer command with the network options
    code = main(["party", "--role", "owner", "--peers", peers, "--no-tls", "--connect-timeout", "2"]
                + _infer_args(data_file))
    assert code == 2
    line = _one_error_line(capsys)
    assert "could not reach the" in line and "within 2 s (connection refused" in line and "--peers" in line, line
    assert time.monotonic() - started < 60


def _service(role: str, peers: str, log: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "secptune.cli", "party", "--role", role, "--peers", peers, "--no-tls", *extra]
    return subprocess.Popen(argv, stdout=open(log.with_suffix(".out"), "w"), stderr=open(log, "w"),
                            start_new_session=True)


def test_a_model_mismatch_is_reported_and_the_services_take_the_next_run(capsys, data_file, tmp_path,
                                                                          no_leftover_processes):
    peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    server = _service("server", peers, tmp_path / "server.log", "--model", "tiny-llama", "--runs", "2", "--json")
    dealer = _service("dealer", peers, tmp_path / "dealer.log", "--runs", "2")
    try:
        # the owner's tokenizer (tiny-bert) is not the server model's (tiny-llama)
        mismatch = ["infer", "--model", "tiny-bert", "--data", str(data_file), "--template", "{text} It was {mask} .",
                    "--verbalizer", "bad,great", "--mode", "secure", "--peers", peers, "--no-tls"]
        assert main(mismatch) == 2
        line = _one_error_line(capsys)
        assert "model mismatch" in line and "1285" in line and "1024" in line, line
        # the same services serve the next run
        assert main(_infer_args(data_file) + ["--peers", peers, "--no-tls", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["scores"]) == 2
        assert server.wait(60) == 0 and dealer.wait(60) == 0
    finally:
        for proc in (server, dealer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reports = [json.loads(line) for line in (tmp_path / "server.out").read_text().splitlines()]
    assert [r["ok"] for r in reports] == [False, True]
    assert "model mismatch" in reports[0]["error"]


def test_a_killed_local_command_takes_its_parties_with_it(tmp_path, no_leftover_processes):
    """SIGKILL of `secptune tune --mode secure` (one host) mid-run: its three party processes end too,
    instead of computing on and writing checkpoints beside a later --resume."""
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate(
        ["a good film", "a bad film", "great acting", "terrible plot"])) + "\n")
    cmd = [sys.executable, "-m", "secptune.cli", "tune", "--model", "tiny-llama", "--mode", "secure", "--train",
           str(data), "--test", str(data), "--k", "1", "--popsize", "2", "--budget", "400", "--prompt-len", "2",
           "--intrinsic-dim", "4", "--quiet", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark = os.environ[deploy_parties.MARK]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "run" / "checkpoint.pt").exists():
        time.sleep(0.1)  # the parties are computing generations now
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert len(deploy_parties.marked_processes(mark)) >= 4  # the command and its three parties
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while deploy_parties.marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert deploy_parties.marked_processes(mark) == []
