"""`secptune party`: one role of a secure run on this host; `secptune keygen`: its TLS key pair.

The model server and the dealer are services: ``secptune party --role server
--model M --peers ...`` waits for the data owner, serves one run in a fresh
process, and waits for the next, until stopped (or ``--runs N``).  A run that
fails — the owner died, a peer hung, a model mismatch — ends that run's process
and the service is ready for the next one.  The server asks only for its model;
the dealer only for network options; the owner drives each run with
``secptune infer|tune --peers ...`` (or ``secptune party --role owner ... infer|tune ...``).
See docs/deployment.md.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from mpc import launcher, tls
from mpc.errors import NetworkConfigError
from mpc.net import Address, Network, check_listen, parse_peers
from mpc.roles import ROLES
from secptune import __version__
from secptune.checkpoints import resolve_model
from secptune.server.party import server_party


def make_network(role: str, peers: str, tls_dir: str | None, no_tls: bool, listen: str | None,
                 connect_timeout_s: float, peer_timeout_s: float, wait_for_owner: bool = False) -> Network:
    """A validated :class:`Network` from command-line options."""
    if tls_dir and no_tls:
        raise NetworkConfigError("give --tls-dir or --no-tls, not both")
    if not tls_dir and not no_tls:
        raise NetworkConfigError(
            "--peers needs --tls-dir DIR (this party's key and the three certificates from `secptune keygen`), "
            "or --no-tls when all three addresses are loopback"
        )
    return Network(
        peers=parse_peers(peers),
        role=role,
        tls_dir=tls_dir,
        listen=Address.parse(listen, "--listen") if listen else None,
        connect_timeout_s=connect_timeout_s,
        peer_timeout_s=peer_timeout_s,
        wait_for_owner=wait_for_owner,
        version=__version__,
    ).validate()


def _say(role: str, message: str) -> None:
    print(f"secptune party ({role}): {message}", file=sys.stderr, flush=True)


def _traffic_line(traffic: dict) -> str:
    if not traffic:
        return ""
    return f"; sent {traffic.get('bytes', 0) / 1e6:.1f} MB in {traffic.get('rounds', 0)} rounds"


def serve(role: str, network: Network, model: str | None = None, runs: int | None = None,
          json_lines: bool = False) -> int:
    """Serve runs as ``server`` or ``dealer`` until stopped (or ``runs`` runs); exit status of the last run."""
    job = None
    if role == "server":
        job = launcher.PartyJob(server_party, (str(resolve_model(model)),))
    check_listen(network)
    signal.signal(signal.SIGTERM, _interrupt)
    protection = "TLS" if network.tls_dir else "no TLS, loopback only"
    _say(role, f"listening on {network.bind} ({protection}); waiting for the owner's run")
    count, last_ok = 0, True
    while runs is None or count < runs:
        count += 1
        started = time.monotonic()
        try:
            result = launcher.run_party(role, network, job)
            last_ok, error, traffic = True, None, result.traffic
            _say(role, f"run {count} finished{_traffic_line(traffic)}")
        except launcher.PartyFailedError as exc:
            last_ok, error, traffic = False, str(exc), {}
            _say(role, f"run {count} ended: {exc}")
        if json_lines:
            print(json.dumps({"role": role, "run": count, "ok": last_ok, "error": error,
                              "wall_s": time.monotonic() - started, "traffic": traffic}), flush=True)
        if runs is None or count < runs:
            _say(role, "ready for the next run")
    return 0 if last_ok else 2


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def keygen(role: str, out_dir: str, days: int = 3650) -> str:
    """Make ``ROLE.key`` and ``ROLE.crt`` in ``out_dir``; returns what to do next."""
    key, cert, fp = tls.keygen(role, out_dir, days)
    others = [r for r in ROLES if r != role]
    return (
        f"wrote {key} (keep it on this host, never share it) and {cert}\n"
        f"  SHA-256 fingerprint: {fp}\n"
        f"  copy {cert.name} into the {others[0]}'s and the {others[1]}'s --tls-dir, and put their "
        f"{others[0]}.crt and {others[1]}.crt into {cert.parent}; compare fingerprints over a trusted channel"
    )
