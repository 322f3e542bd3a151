"""Where the three parties of a multi-host run live, and the errors a user can fix.

A run across machines is described by a :class:`Network`: the address of each
party (``--peers OWNER,SERVER,DEALER``, the same on all three hosts), the role of
this process, and how the channels are protected (``tls_dir``: mutually
authenticated TLS, see :mod:`mpc.tls`; ``None``: plain TCP, allowed only when
every address is a loopback address).  :mod:`mpc.transport` carries CrypTen's
traffic over it.  Every error here is meant for the user: one line saying what is
wrong and what to do.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, replace

from mpc import tls
from mpc.errors import NetworkConfigError, StartupError
from mpc.roles import ROLES




@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, what: str = "address") -> "Address":
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise NetworkConfigError(f"{what} {text!r} is not host:port (for example 10.0.0.2:29500)")
        return cls(host, int(port))

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_peers(text: str) -> tuple[Address, Address, Address]:
    """``OWNER,SERVER,DEALER`` (host:port each) as three addresses."""
    parts = [p for p in (text or "").split(",") if p.strip()]
    if len(parts) != 3:
        raise NetworkConfigError(
            f"--peers needs three addresses in the order OWNER,SERVER,DEALER (host:port each), got {len(parts)}"
        )
    peers = tuple(Address.parse(p, f"--peers entry for the {role}") for p, role in zip(parts, ROLES))
    for i in range(3):
        for j in range(i + 1, 3):
            if peers[i] == peers[j]:
                raise NetworkConfigError(
                    f"--peers gives the {ROLES[i]} and the {ROLES[j]} the same address {peers[i]}; "
                    "each party needs its own host:port"
                )
    return peers  # type: ignore[return-value]


@dataclass(frozen=True)
class Network:
    """One party's view of a multi-host run.

    ``listen`` overrides the address this party binds (default: its own entry in
    ``peers``), e.g. behind NAT or a port forward.  ``connect_timeout_s`` bounds
    the start-up (how long to wait for the others; a service with
    ``wait_for_owner`` waits for the owner without limit, then this long for the
    rest); ``peer_timeout_s`` bounds how long a peer may stay silent during the run
    before it counts as hung (parties send heartbeats while they compute).
    """

    peers: tuple[Address, Address, Address]
    role: str
    tls_dir: str | None = None
    listen: Address | None = None
    connect_timeout_s: float = 60.0
    peer_timeout_s: float = 60.0
    wait_for_owner: bool = False
    version: str = ""

    @property
    def rank(self) -> int:
        return ROLES.index(self.role)

    @property
    def address(self) -> Address:
        return self.peers[self.rank]

    @property
    def bind(self) -> Address:
        return self.listen or self.address

    def describe(self) -> str:
        scheme = "tls" if self.tls_dir else "tcp"
        return f"{scheme}://" + ";".join(f"{r}={a}" for r, a in zip(ROLES, self.peers))

    def with_role(self, role: str) -> "Network":
        return replace(self, role=role)

    def validate(self) -> "Network":
        """Raise NetworkConfigError for options that cannot work; load the keys if TLS."""
        if self.role not in ROLES:
            raise NetworkConfigError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if len(self.peers) != 3:
            raise NetworkConfigError("--peers needs three addresses: OWNER,SERVER,DEALER")
        if self.tls_dir is None:
            off = [f"{r} {a}" for r, a in zip(ROLES, self.peers) if not a.is_loopback()]
            if self.listen is not None and not self.listen.is_loopback():
                off.append(f"--listen {self.listen}")
            if off:
                raise NetworkConfigError(
                    f"--no-tls is for loopback addresses only ({', '.join(off)} is not): shares would cross the "
                    "network in the clear; create keys with `secptune keygen` and pass --tls-dir (docs/deployment.md)"
                )
        else:
            tls.load(self.tls_dir, self.role)
        for name, value in (("--connect-timeout", self.connect_timeout_s), ("--peer-timeout", self.peer_timeout_s)):
            if not value > 0:
                raise NetworkConfigError(f"{name} must be a positive number of seconds, not {value}")
        return self


def check_listen(network: Network) -> None:
    """Fail at once with a plain message if this party cannot listen on its address."""
    bind = network.bind
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve this {network.role}'s address {bind}: {exc.strerror}; fix --peers") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        raise StartupError(listen_problem(bind, network.role, exc)) from exc
    finally:
        sock.close()


def listen_problem(bind: Address, role: str, exc: OSError) -> str:
    """One line for a failed bind (port in use, address not on this host, ...)."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {bind}: the port is in use (another secptune party or program holds it); stop it, "
            "or choose another port in --peers on all three parties"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {bind}: that address is not on this host; the {role}'s entry in --peers must be "
            "this host's own address (or pass --listen HOST:PORT)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {bind}: permission denied (ports below 1024 need root); choose a port above 1024"
    return f"cannot listen on {bind}: {exc.strerror or exc}"
