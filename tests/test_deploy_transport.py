"""The multi-host transport: torch.distributed semantics, start-up errors, lost and silent peers.

Three parties run as threads of this process (each with its own channels), so
these tests need no model and no spawned processes.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from mpc.errors import NetworkConfigError, PeerLostError, PeerTimeoutError, StartupError
from mpc.net import Address, Network, check_listen, parse_peers
from mpc.transport import Dist, Transport

from deploy_parties import ROLES, free_ports, loopback_peers, network


def run_parties(programs: dict, timeout_s: float = 60.0) -> tuple[dict, dict]:
    """Run ``programs[role](dist_or_transport)`` in threads; returns (results, errors) by role."""
    results, errors = {}, {}

    def body(role):
        try:
            results[role] = programs[role]()
        except BaseException as exc:  # collected for the test to inspect
            errors[role] = exc

    threads = [threading.Thread(target=body, args=(role,), daemon=True) for role in programs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), "a party thread did not finish"
    return results, errors


def connected(role, peers, **kw) -> Dist:
    d = Dist(network(role, peers, **kw))
    d.init_process_group("gloo", "unused", 3, ROLES.index(role))
    return d


def test_collectives_follow_torch_distributed():
    peers = loopback_peers(free_ports(3))

    def party(role):
        def program():
            d = connected(role, peers)
            r = d.get_rank()
            main, everyone, dealer = d.new_group([0, 1]), d.new_group([0, 1, 2]), d.new_group([0, 2])
            out = {}
            if r < 2:
                t = torch.tensor([r + 1, 10 * (r + 1)])
                d.all_reduce(t, group=main)
                out["sum"] = t.tolist()
                x = torch.tensor([0b1100 if r == 0 else 0b1010])
                d.all_reduce(x, op=torch.distributed.ReduceOp.BXOR, group=main)
                out["xor"] = int(x)
                batch = [torch.full((3,), float(r)), torch.arange(4) * (r + 1), torch.tensor(True if r else False)]
                works = [d.broadcast(b, 1, group=main, async_op=True) for b in batch]
                for w in reversed(works):  # waited out of order: each still gets its own message
                    w.wait()
                out["bcast"] = [b.tolist() for b in batch]
                red = torch.tensor([5 * (r + 1)])
                d.reduce(red, 0, group=main)
                out["reduce"] = int(red) if r == 0 else None
                gathered = [torch.zeros(2, dtype=torch.long) for _ in range(2)]
                d.all_gather(gathered, torch.tensor([r, r + 7]), group=main)
                out["all_gather"] = [g.tolist() for g in gathered]
                got = [torch.zeros(2, dtype=torch.long) for _ in range(2)] if r == 0 else None
                d.gather(torch.tensor([r, -r]), got, 0, group=main)
                out["gather"] = [g.tolist() for g in got] if r == 0 else None
                part = torch.zeros(2, dtype=torch.long)
                d.scatter(part, [torch.tensor([1, 2]), torch.tensor([3, 4])] if r == 0 else None, 0, group=main)
                out["scatter"] = part.tolist()
                big = torch.randint(-(2**62), 2**62, (600_000,), generator=torch.Generator().manual_seed(r))
                mine = big.clone()
                d.all_reduce(big, group=main)
                other = torch.randint(-(2**62), 2**62, (600_000,), generator=torch.Generator().manual_seed(1 - r))
                out["big_ok"] = bool(torch.equal(big, mine + other))
                empty = torch.zeros(0, dtype=torch.long)
                d.all_reduce(empty, group=main)
                a, b = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
                wa, wb = d.irecv(a, 1 - r, group=main), d.irecv(b, 1 - r, group=main)
                d.isend(torch.tensor(100 + r), 1 - r, group=main).wait()
                d.send(torch.tensor(200 + r), 1 - r, group=main)
                wb.wait()
                wa.wait()
                out["p2p"] = (int(a), int(b))
            d.barrier(group=everyone)
            if r in (0, 2):
                seed = torch.tensor([4, 5, 6]) if r == 2 else torch.zeros(3, dtype=torch.long)
                d.broadcast(seed, 2, group=dealer)
                out["dealer_bcast"] = seed.tolist()
            d.barrier()
            d.destroy_process_group()
            return out

        return program

    results, errors = run_parties({role: party(role) for role in ROLES})
    assert not errors, errors
    owner, server, dealer = results["owner"], results["server"], results["dealer"]
    for out in (owner, server):
        assert out["sum"] == [3, 30]
        assert out["xor"] == 0b0110
        assert out["bcast"] == [[1.0, 1.0, 1.0], [0, 2, 4, 6], True]
        assert out["all_gather"] == [[0, 7], [1, 8]]
        assert out["big_ok"]
    assert owner["reduce"] == 15 and owner["gather"] == [[0, 0], [1, -1]]
    assert owner["scatter"] == [1, 2] and server["scatter"] == [3, 4]
    assert owner["p2p"] == (101, 201) and server["p2p"] == (100, 200)
    assert owner["dealer_bcast"] == dealer["dealer_bcast"] == [4, 5, 6]


def test_version_mismatch_is_reported_on_both_sides():
    peers = loopback_peers(free_ports(3))
    versions = {"owner": "0.1.0", "server": "0.2.0", "dealer": "0.1.0"}

    def party(role):
        return lambda: Transport(network(role, peers, version=versions[role], connect_timeout_s=8)).start()

    _, errors = run_parties({role: party(role) for role in ROLES})
    for role in ("owner", "server"):
        assert isinstance(errors[role], StartupError), errors
        assert "version mismatch" in str(errors[role]) and "0.1.0" in str(errors[role]) and "0.2.0" in str(errors[role])


def test_wrong_role_at_an_address_is_named():
    ports = free_ports(3)
    right = loopback_peers(ports)
    swapped = loopback_peers([ports[0], ports[2], ports[1]])  # the owner lists server and dealer the wrong way round

    def party(role):
        peers = swapped if role == "owner" else right
        return lambda: Transport(network(role, peers, connect_timeout_s=5)).start()

    _, errors = run_parties({role: party(role) for role in ROLES})
    message = str(errors["owner"])
    assert "is the dealer, but --peers lists it as the server" in message or (
        "is the server, but --peers lists it as the dealer" in message
    ), message
    assert "OWNER,SERVER,DEALER" in message


def test_unreachable_peer_is_reported_within_the_connect_timeout():
    peers = loopback_peers(free_ports(3))  # nobody listens at the server's and dealer's ports
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"could not reach the (server|dealer) at 127\.0\.0\.1:\d+ within 2 s "
                                           r"\(connection refused"):
        Transport(network("owner", peers, connect_timeout_s=2)).start()
    assert time.monotonic() - started < 6


def test_a_server_waits_for_the_owner_then_times_out_on_the_rest():
    peers = loopback_peers(free_ports(3))
    with pytest.raises(StartupError, match="the owner did not connect to this server"):
        Transport(network("server", peers, connect_timeout_s=1)).start()


def test_port_in_use_is_reported():
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        ports = free_ports(2)
        net = network("server", loopback_peers([ports[0], port, ports[1]]))
        with pytest.raises(StartupError, match=rf"cannot listen on 127\.0\.0\.1:{port}: the port is in use"):
            check_listen(net)
        with pytest.raises(StartupError, match="the port is in use"):
            Transport(net).start()
    finally:
        holder.close()


def test_options_that_cannot_work_are_refused():
    with pytest.raises(NetworkConfigError, match="three addresses"):
        parse_peers("127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(NetworkConfigError, match="not host:port"):
        parse_peers("127.0.0.1:1,server,127.0.0.1:3")
    with pytest.raises(NetworkConfigError, match="the same address"):
        parse_peers("127.0.0.1:1,127.0.0.1:1,127.0.0.1:3")
    remote = parse_peers("10.0.0.1:29500,10.0.0.2:29500,10.0.0.3:29500")
    with pytest.raises(NetworkConfigError, match="--no-tls is for loopback addresses only"):
        Network(remote, "owner").validate()
    with pytest.raises(NetworkConfigError, match="owner.key is missing"):
        Network(remote, "owner", tls_dir="/").validate()
    assert parse_peers("[::1]:5,localhost:6,127.0.0.2:7")[0] == Address("::1", 5)


def test_a_party_that_leaves_without_goodbye_stops_the_others_at_once():
    peers = loopback_peers(free_ports(3))
    box = {}

    def party(role):
        def program():
            d = connected(role, peers)
            if role == "server":
                time.sleep(0.5)
                d.transport.close(graceful=False)  # as if the process died
                return None
            box[role] = time.monotonic()
            try:
                d.recv(torch.zeros(1), 1)  # waits for data that never comes
            finally:
                box[role] = time.monotonic() - box[role]
                if role == "dealer":
                    time.sleep(1.0)  # the dealer's own exit must not race the owner's notice of the server
                d.transport.close(graceful=False)

        return program

    _, errors = run_parties({role: party(role) for role in ROLES})
    assert isinstance(errors["owner"], PeerLostError), errors
    assert "lost the connection to the server" in str(errors["owner"])
    assert box["owner"] < 3.0  # not a timeout: the closed connection is noticed at once


def test_a_silent_peer_is_reported_after_the_peer_timeout():
    peers = loopback_peers(free_ports(3))
    box = {}

    def party(role):
        def program():
            # the dealer notices the mute server too; a longer limit there keeps the owner's report first
            d = connected(role, peers, peer_timeout_s=4.0 if role == "dealer" else 1.5)
            if role == "server":
                d.transport.heartbeat_s = 1e9  # alive but mute, like a frozen host
                time.sleep(6)
                d.transport.close(graceful=False)
                return None
            started = time.monotonic()
            try:
                if role == "owner":
                    d.recv(torch.zeros(1), 1)
                else:
                    d.recv(torch.zeros(1), 0)  # the dealer waits on the owner, who is alive
            finally:
                box[role] = time.monotonic() - started
                d.transport.close(graceful=False)

        return program

    _, errors = run_parties({role: party(role) for role in ROLES})
    assert isinstance(errors["owner"], PeerTimeoutError), errors
    assert "the server at 127.0.0.1" in str(errors["owner"]) and "sent nothing for" in str(errors["owner"])
    assert 1.5 <= box["owner"] < 4.0
    assert isinstance(errors["dealer"], (PeerTimeoutError, PeerLostError))  # it notices the mute server too
