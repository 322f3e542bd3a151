"""Channels between hosts are confidential and authenticated (TLS 1.3, pinned certificates).

The evidence: an eavesdropper relaying the owner's and the server's traffic sees
both shares of an opened value — and can add them up — over plain TCP, and sees
neither over TLS.  A party holding a key other than the pinned one is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading

import pytest
import torch

from mpc import launcher
from mpc.errors import StartupError
from mpc.net import Address
from mpc.transport import Dist, Transport
from secptune.cli import main

import deploy_parties
from deploy_parties import ROLES, Relay, free_ports, loopback_peers, make_tls_dirs, network

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test keys")


@pytest.fixture(scope="module")
def tls_dirs(tmp_path_factory):
    return make_tls_dirs(tmp_path_factory.mktemp("keys"))


def test_keygen_writes_a_private_key_and_a_certificate(tmp_path, capsys):
    assert main(["keygen", "--role", "server", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 fingerprint" in out and "owner's and the dealer's --tls-dir" in out
    assert stat.S_IMODE(os.stat(tmp_path / "server.key").st_mode) == 0o600
    assert (tmp_path / "server.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert main(["keygen", "--role", "server", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def _start_all(dirs, peers=None, **kw):
    peers = peers or loopback_peers(free_ports(3))
    errors = {}
    all_up = threading.Barrier(3, timeout=15)

    def body(role):
        t = None
        try:
            t = Transport(network(role, peers, dirs, connect_timeout_s=4, **kw))
            t.start()
            all_up.wait()  # close only when everyone has started
        except Exception as exc:  # inspected by the test
            errors[role] = exc
            all_up.abort()
        finally:
            if t is not None:
                t.close(graceful=True)

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in ROLES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_pinned_certificates_connect(tls_dirs):
    assert _start_all(tls_dirs) == {}


def test_a_party_with_another_key_is_refused(tls_dirs, tmp_path):
    impostor = tmp_path / "impostor"
    made = make_tls_dirs(tmp_path / "other", roles=("server",))["server"]
    impostor.mkdir()
    for role in ("owner", "dealer"):
        shutil.copy(tls_dirs["server"] / f"{role}.crt", impostor / f"{role}.crt")
    for name in ("server.crt", "server.key"):
        shutil.copy(made / name, impostor / name)  # a 'server' whose key the owner never pinned
    errors = _start_all({**tls_dirs, "server": impostor})
    assert isinstance(errors["owner"], StartupError), errors
    text = str(errors["owner"])
    assert "the server at 127.0.0.1" in text and "does not trust" in text, text
    assert "refused" in str(errors["server"]) or "stopped" in str(errors["server"]), errors


def test_tls_and_plain_parties_do_not_mix(tls_dirs):
    errors = _start_all({"owner": tls_dirs["owner"], "server": tls_dirs["server"], "dealer": None})
    messages = " | ".join(f"{r}: {e}" for r, e in errors.items())
    print(messages)
    assert errors and "TLS" in messages and "--no-tls" in messages, messages


def _relays_and_networks(dirs):
    """Relays in front of the owner and the server (all their traffic passes through them)."""
    listen = free_ports(3)
    relays = {role: Relay(listen[i]) for i, role in enumerate(("owner", "server"))}
    for relay in relays.values():
        relay.start()
    peers = loopback_peers([relays["owner"].port, relays["server"].port, listen[2]])

    def net(role):
        bind = Address("127.0.0.1", listen[ROLES.index(role)]) if role != "dealer" else None
        return network(role, peers, dirs, listen=bind)

    return relays, net


def _captured(relays) -> list[bytes]:
    for relay in relays.values():
        relay.close()
    return relays["owner"].captured() + relays["server"].captured()


def test_plain_tcp_shows_the_shares_to_an_eavesdropper():
    """Negative control: without TLS the relay sees both shares of an opened value (the
    exchange below is what CrypTen's opening does: an all-reduce of the two shares)."""
    relays, net = _relays_and_networks(None)
    secret = (torch.arange(256, dtype=torch.float64) * 1.5 + 1000.0) * 2**16
    gen = torch.Generator().manual_seed(5)
    shares = {"owner": torch.randint(-(2**62), 2**62, (256,), generator=gen)}
    shares["server"] = secret.long() - shares["owner"]
    opened = {}

    def party(role):
        d = Dist(net(role))
        d.init_process_group("gloo", "unused", 3, ROLES.index(role))
        main = d.new_group([0, 1])
        d.new_group([0, 1, 2])
        if role != "dealer":
            t = shares[role].clone()
            d.all_reduce(t, group=main)
            opened[role] = t
        d.barrier()
        d.destroy_process_group()

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in ROLES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    streams = _captured(relays)
    assert torch.equal(opened["owner"], secret.long()) and torch.equal(opened["server"], secret.long())
    for share in shares.values():
        assert any(share.numpy().tobytes() in s for s in streams), "the relay should see each share in the clear"


def test_tls_hides_the_shares_an_eavesdropper_could_add_up(tls_dirs, no_leftover_processes):
    """A real CrypTen opening over TLS through the same relays: no share, no secret on the wire."""
    secret = torch.arange(256, dtype=torch.float64) * 1.5 + 1000.0
    relays, net = _relays_and_networks(tls_dirs)
    job = launcher.PartyJob(deploy_parties.open_secret, (None, tuple(secret.shape)))
    started = {role: launcher.start_party(role, net(role), job if role == "server" else None)
               for role in ("server", "dealer")}
    try:
        owner = launcher.run_party("owner", net("owner"),
                                   launcher.PartyJob(deploy_parties.open_secret, (secret, tuple(secret.shape))), 180)
        server = launcher.wait_party("server", *started["server"], timeout_s=60)
        launcher.wait_party("dealer", *started["dealer"], timeout_s=60)
    finally:
        for proc, _ in started.values():
            launcher.stop_party(proc, grace_s=10)
        streams = _captured(relays)
    owner, server = owner.value, server.value
    assert torch.equal(owner["plain"], secret)
    assert torch.equal(owner["share"] + server["share"], (secret * 2**16).long())  # what an eavesdropper would need
    assert sum(len(s) for s in streams) > 2 * 2048  # the relay did carry the run
    for share in (owner["share"], server["share"]):
        assert not any(share.numpy().tobytes()[:64] in s for s in streams), "TLS: no share may cross in the clear"
    assert not any((secret * 2**16).long().numpy().tobytes()[:64] in s for s in streams)
