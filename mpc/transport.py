"""CrypTen's traffic between hosts: TLS channels under CrypTen's own communicator.

gloo (torch.distributed's CPU backend) has neither encryption nor authentication,
and its peers connect to ephemeral ports announced through the rendezvous store,
so it cannot be put behind a fixed tunnel.  For runs across machines secptune
therefore replaces the *transport* under CrypTen's ``DistributedCommunicator``:
:func:`install` points the module-level name ``dist`` in CrypTen's communicator
and TTP-provider modules at a :class:`Dist` object (through :mod:`mpc.crypten_seam`), which implements the part of
the ``torch.distributed`` API those modules use (point-to-point, broadcast,
(all-)reduce, (all-)gather, scatter, barrier, groups) over this module's
channels.  CrypTen's code, the secure protocol, the dealer and the traffic
accounting (which wraps the communicator's methods) run unchanged.

Channels.  Every ordered pair of parties has its own TCP connection, written by
one side only (``a -> b`` is opened by ``a``), so each TLS connection is used by
one thread in one direction.  A reader thread per incoming channel drains it into
per-group queues, so a send never waits for the peer's program to post a receive.
Messages of one group between two parties are matched in order (as in MPI/gloo).

Start-up.  Each party listens on its own address (a local run's launcher binds
that socket itself and hands it over, see :func:`mpc.launcher.run_local`) and
connects to the other two.
After the TLS handshake (TLS 1.3, both sides present certificates pinned by
fingerprint, see :mod:`mpc.tls`) the connector sends a hello (role, secptune
version, transport protocol) and the listener answers with its own; a wrong
role at an address, a version mismatch, an untrusted certificate, an unreachable
or busy peer each end the start-up with a plain message.

Faults.  Parties send a heartbeat on every idle channel (every
``min(2 s, peer_timeout / 5)``).  A wait for a peer's data fails at once when any
peer's connection closes without a goodbye, and after ``peer_timeout_s`` when any
peer has sent nothing at all (a hung process or a cut network).  Sends fail when
the peer has not accepted data for ``peer_timeout_s``.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from mpc import crypten_seam
from mpc.errors import NetworkConfigError, PeerLostError, PeerTimeoutError, StartupError, TransportError
from mpc.net import Address, Network, listen_problem
from mpc.roles import ROLES
from mpc import tls

PROTOCOL = 1  # wire format version; parties with different values refuse each other
_MAGIC = b"SPTN"
_HELLO = struct.Struct("!4sI")
_FRAME = struct.Struct("!BIQ")  # kind, group, payload length
_DATA, _HEARTBEAT, _BYE, _ABORT = 1, 2, 3, 4
_CHUNK = 1 << 20  # sends are cut into chunks, so a send times out only when no chunk moves
_HANDSHAKE_S = 15.0
_NO_TLS = "this party runs without TLS (--no-tls)"


def _log(message: str) -> None:
    print(f"secptune transport: {message}", file=sys.stderr, flush=True)


@dataclass(eq=False)
class _Peer:
    rank: int
    role: str
    address: Address
    out_sock: socket.socket | None = None
    in_sock: socket.socket | None = None
    out_lock: threading.Lock = field(default_factory=threading.Lock)
    state: str = "up"  # up | bye | lost
    reason: str = ""
    aborted: bool = False  # it said why it stopped (reason)
    last_seen: float = 0.0
    last_sent: float = 0.0
    last_error: str = "no answer yet"
    inbox: dict = field(default_factory=dict)  # (group, seq) -> payload
    arrived: dict = field(default_factory=dict)  # group -> next arrival seq
    reserved: dict = field(default_factory=dict)  # group -> next receive seq
    reader: threading.Thread | None = None


def _describe_oserror(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return {
            errno.ECONNREFUSED: "connection refused: nothing listens there",
            errno.EHOSTUNREACH: "no route to host",
            errno.ENETUNREACH: "network unreachable",
            errno.ECONNRESET: "connection reset",
            errno.EPIPE: "connection closed by the peer",
        }.get(exc.errno, exc.strerror or str(exc))
    return str(exc) or type(exc).__name__


class Transport:
    """The channels of one party of a run: start them, send, receive, close."""

    def __init__(self, network: Network, log=_log, listener: socket.socket | None = None):
        network.validate()
        self.net = network
        self.rank = network.rank
        self.role = network.role
        self.log = log
        self.creds = None
        if network.tls_dir:
            self.creds = tls.load(network.tls_dir, network.role)
        self.peers = {r: _Peer(r, ROLES[r], network.peers[r]) for r in range(len(ROLES)) if r != self.rank}
        self.cond = threading.Condition()
        self.problem: TransportError | None = None
        self.refused: str | None = None  # why the last incoming connection was turned away
        self.owner_seen = self.rank == 0
        self.started = False
        self.closing = False
        self.close_reason: str | None = None
        self.listener: socket.socket | None = listener  # already bound and listening (local runs)
        self.heartbeat_s = max(0.05, min(2.0, network.peer_timeout_s / 5))

    # -- start-up --------------------------------------------------------------
    def start(self) -> None:
        """Listen, connect to both peers, exchange hellos; blocks until all channels are up."""
        try:
            if self.listener is None:
                self.listener = self._listen()
            threading.Thread(target=self._accept_loop, name="secptune-accept", daemon=True).start()
            if self.rank == 0:
                self._start_connectors()
            self._wait_until_connected()
        except BaseException as exc:
            # tell the peers already connected why (start-up messages hold no secrets)
            reason = str(exc) if isinstance(exc, StartupError) and not getattr(exc, "relayed", False) else None
            self.close(graceful=False, reason=reason)
            raise
        now = time.monotonic()
        for peer in self.peers.values():
            peer.last_seen = peer.last_sent = now
        self.started = True
        threading.Thread(target=self._heartbeat_loop, name="secptune-heartbeat", daemon=True).start()

    def _listen(self) -> socket.socket:
        bind = self.net.bind
        where = f"this {self.role}'s address {bind}"
        try:
            infos = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise StartupError(f"cannot resolve {where}: {exc.strerror}; fix --peers (or --listen)") from exc
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise StartupError(listen_problem(bind, self.role, exc)) from exc
        return sock

    def _start_connectors(self) -> None:
        for peer in self.peers.values():
            threading.Thread(target=self._connect_loop, args=(peer,), name=f"secptune-connect-{peer.role}",
                             daemon=True).start()

    def _wait_until_connected(self) -> None:
        deadline = None if self.net.wait_for_owner and not self.owner_seen else time.monotonic() + self.net.connect_timeout_s
        with self.cond:
            while True:
                if self.problem is not None:
                    raise self.problem
                if all(p.out_sock is not None and p.in_sock is not None for p in self.peers.values()):
                    return
                lost = [p for p in self.peers.values() if p.state != "up"]
                if lost:
                    p = lost[0]
                    if p.aborted:
                        problem = StartupError(f"the {p.role} at {p.address} stopped the start-up: {p.reason}")
                        problem.relayed = True
                        raise problem
                    raise StartupError(f"the {p.role} at {p.address} went away during the start-up ({p.reason})")
                if deadline is None and self.owner_seen:
                    deadline = time.monotonic() + self.net.connect_timeout_s
                if deadline is not None and time.monotonic() > deadline:
                    raise StartupError(self._missing_message())
                self.cond.wait(0.1)

    def _missing_message(self) -> str:
        message = self._missing()
        if self.refused:
            message += f" (last refused connection: {self.refused})"
        return message

    def _missing(self) -> str:
        t = self.net.connect_timeout_s
        if not self.owner_seen:
            return (
                f"the owner did not connect to this {self.role} ({self.net.address}) within {t:.0f} s: start the "
                "owner's run (`secptune infer|tune --peers ...`) and check its --peers entry for this party"
            )
        for peer in self.peers.values():
            if peer.out_sock is None:
                return (
                    f"could not reach the {peer.role} at {peer.address} within {t:.0f} s ({peer.last_error}): check "
                    f"that it is running and that --peers (order OWNER,SERVER,DEALER) is the same on all three parties"
                )
        for peer in self.peers.values():
            if peer.in_sock is None:
                return (
                    f"the {peer.role} did not connect to this {self.role} ({self.net.address}) within {t:.0f} s: "
                    f"check the {peer.role}'s --peers entry for the {self.role}, and firewalls"
                )
        return "start-up did not complete"  # unreachable: called only while a channel is missing

    def _fail(self, problem: TransportError) -> None:
        with self.cond:
            if self.problem is None:
                self.problem = problem
            self.cond.notify_all()

    def _hello(self, status: str = "ok") -> dict:
        return {"protocol": PROTOCOL, "version": self.net.version, "role": self.role, "rank": self.rank,
                "tls": self.creds is not None, "status": status}

    def _version_problem(self, hello: dict, peer_role: str, where: str) -> str | None:
        if hello.get("protocol") == PROTOCOL and hello.get("version") == self.net.version:
            return None
        return (
            f"version mismatch: this {self.role} runs secptune {self.net.version or '?'} (transport {PROTOCOL}), "
            f"the {peer_role} {where} runs {hello.get('version') or '?'} (transport {hello.get('protocol')}); "
            "install the same secptune version on all three hosts"
        )

    def _check_certificate(self, sock, role: str, where: str) -> None:
        if self.creds is None:
            return
        got = tls.fingerprint(sock.getpeercert(binary_form=True))
        if got != self.creds.fingerprints[role]:
            raise _Refused(
                f"the party {where} presented a certificate that is not the {role}'s ({self.net.tls_dir}/{role}.crt)"
            )

    def _accept_loop(self) -> None:
        while not self.closing:
            try:
                sock, addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle_incoming, args=(sock, addr), daemon=True).start()

    def _handle_incoming(self, sock: socket.socket, addr) -> None:
        where = f"connecting from {addr[0]}"
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(_HANDSHAKE_S)
            if self.creds is not None:
                sock = self.creds.server_context.wrap_socket(sock, server_side=True)
            hello = _read_hello(sock)
            rank = hello.get("rank")
            peer = self.peers.get(rank) if isinstance(rank, int) else None
            if peer is None or hello.get("role") != ROLES[rank]:
                raise _Refused(f"a party {where} claims to be {hello.get('role')!r} (rank {rank}), which this "
                               f"{self.role} does not expect")
            self._check_certificate(sock, peer.role, where)
            problem = self._version_problem(hello, peer.role, where)
            if problem:
                _send_hello(sock, self._hello(problem))
                self._fail(StartupError(problem))
                sock.close()
                return
            with self.cond:
                busy = peer.in_sock is not None or self.closing
                if not busy:
                    peer.in_sock = sock  # claimed: a second connection for this role is turned away
            if busy:
                _send_hello(sock, self._hello("busy"))
                sock.close()
                return
            try:
                _send_hello(sock, self._hello())
            except OSError:
                with self.cond:
                    peer.in_sock = None
                raise
            sock.settimeout(None)
            with self.cond:
                peer.last_seen = time.monotonic()
                peer.reader = threading.Thread(target=self._read_loop, args=(peer, sock),
                                               name=f"secptune-read-{peer.role}", daemon=True)
                peer.reader.start()
                if peer.rank == 0 and not self.owner_seen:
                    self.owner_seen = True
                    self._start_connectors()
                self.cond.notify_all()
        except _Refused as exc:
            self.refused = str(exc)
            self.log(f"refused a connection: {exc}")
            _send_hello_quietly(sock, self._hello(str(exc)))
            sock.close()
        except _TLSBytes:
            self.refused = f"from {addr[0]}: it uses TLS, this party runs with --no-tls"
            self.log(f"refused a connection {self.refused}")
            _send_hello_quietly(sock, self._hello(_NO_TLS))  # a TLS client reads this as a plain-text answer
            sock.close()
        except (OSError, ValueError, EOFError) as exc:
            self.refused = f"from {addr[0]}: {_incoming_problem(exc, self.creds is not None)}"
            self.log(f"refused a connection {self.refused}")
            sock.close()

    def _connect_loop(self, peer: _Peer) -> None:
        backoff = 0.1
        while not self.closing and self.problem is None:
            try:
                sock = self._connect_once(peer)
            except _Retry as exc:
                peer.last_error = str(exc)
                time.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            except TransportError as exc:
                self._fail(exc)
                return
            with self.cond:
                if self.closing:  # this party stopped while the hello was under way
                    if self.close_reason:
                        _send_abort(sock, self.close_reason)
                    _close(sock)
                    return
                peer.out_sock = sock
                self.cond.notify_all()
            return

    def _connect_once(self, peer: _Peer) -> socket.socket:
        where = f"at {peer.address}"
        try:
            raw = socket.create_connection((peer.address.host, peer.address.port), timeout=5.0)
        except socket.gaierror as exc:
            raise StartupError(f"cannot resolve the {peer.role}'s host {peer.address.host!r} in --peers: "
                               f"{exc.strerror}") from exc
        except OSError as exc:
            raise _Retry(_describe_oserror(exc)) from exc
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(_HANDSHAKE_S)
        sock = raw
        try:
            if self.creds is not None:
                try:
                    sock = self.creds.client_context.wrap_socket(raw)
                except ssl.SSLCertVerificationError as exc:
                    raise StartupError(
                        f"the {peer.role} {where} presented a certificate this {self.role} does not trust "
                        f"({exc.verify_message}): put the {peer.role}'s certificate into "
                        f"{self.net.tls_dir}/{peer.role}.crt"
                    ) from exc
                except ssl.SSLError as exc:
                    if isinstance(exc, ssl.SSLEOFError) or "EOF" in str(exc).upper():
                        raise _Retry("it closed the connection during the TLS handshake; it may be starting, "
                                     "or run with --no-tls") from exc
                    raise StartupError(
                        f"TLS handshake with the {peer.role} {where} failed ({exc.reason or exc}): it probably runs "
                        "with --no-tls; all three parties need --tls-dir (or, all on loopback, --no-tls)"
                    ) from exc
                except OSError as exc:
                    raise _Retry(f"TLS handshake failed ({_describe_oserror(exc)})") from exc
                self._check_certificate(sock, peer.role, where)
            try:
                _send_hello(sock, self._hello())
                reply = _read_hello(sock)
            except ssl.SSLError as exc:
                raise StartupError(
                    f"the {peer.role} {where} refused this {self.role}'s certificate ({exc.reason or exc}): "
                    f"give it {self.role}.crt from this party's --tls-dir (docs/deployment.md)"
                ) from exc
            except (EOFError, ConnectionError) as exc:
                raise _Retry(f"it closed the connection during the hello ({_describe_oserror(exc)})") from exc
            except socket.timeout as exc:
                raise _Retry("no hello within the handshake time") from exc
            except _TLSBytes as exc:
                raise StartupError(
                    f"the {peer.role} {where} uses TLS, but this {self.role} runs with --no-tls; all three parties "
                    "need the same setting (--tls-dir, or --no-tls all on loopback)"
                ) from exc
            except ValueError as exc:
                raise StartupError(f"the program at {peer.address} is not a secptune party ({exc}): "
                                   "check the port in --peers") from exc
            if reply.get("role") != peer.role:
                raise StartupError(
                    f"the party at {peer.address} is the {reply.get('role')}, but --peers lists it as the "
                    f"{peer.role} (the order is OWNER,SERVER,DEALER)"
                )
            problem = self._version_problem(reply, peer.role, where)
            if problem:
                raise StartupError(problem)
            if reply.get("status") == "busy":
                raise _Retry(f"the {peer.role} is busy with another run")
            if reply.get("status") == _NO_TLS and self.creds is not None:
                raise StartupError(
                    f"the {peer.role} {where} runs with --no-tls, but this {self.role} uses TLS; all three parties "
                    "need --tls-dir (or, all on loopback, --no-tls)"
                )
            if reply.get("status") != "ok":
                raise StartupError(f"the {peer.role} {where} refused this {self.role}: {reply.get('status')}")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.net.peer_timeout_s)
        return sock

    # -- running ---------------------------------------------------------------
    def _recv_exact(self, peer: _Peer, sock, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = sock.recv_into(view[got:], min(n - got, _CHUNK))
            if k == 0:
                raise EOFError("connection closed")
            got += k
            peer.last_seen = time.monotonic()
        return buf

    def _read_loop(self, peer: _Peer, sock) -> None:
        try:
            while True:
                kind, group, length = _FRAME.unpack(self._recv_exact(peer, sock, _FRAME.size))
                peer.last_seen = time.monotonic()
                if kind == _HEARTBEAT:
                    continue
                if kind == _BYE:
                    with self.cond:
                        if peer.state == "up":
                            peer.state = "bye"
                        self.cond.notify_all()
                    return
                if kind == _ABORT:
                    message = self._recv_exact(peer, sock, min(length, 4096)).decode(errors="replace")
                    with self.cond:
                        if peer.state == "up":
                            peer.state, peer.reason, peer.aborted = "lost", message, True
                        self.cond.notify_all()
                    return
                if kind != _DATA:
                    raise ValueError(f"unknown frame kind {kind}")
                payload = self._recv_exact(peer, sock, length)
                with self.cond:
                    seq = peer.arrived.get(group, 0)
                    peer.arrived[group] = seq + 1
                    peer.inbox[(group, seq)] = payload
                    self.cond.notify_all()
        except Exception as exc:  # EOF, reset, TLS error, or our own close
            with self.cond:
                if not self.closing and peer.state == "up":
                    peer.state = "lost"
                    peer.reason = "connection closed" if isinstance(exc, EOFError) else _describe_oserror(exc)
                self.cond.notify_all()

    def _heartbeat_loop(self) -> None:
        frame = _FRAME.pack(_HEARTBEAT, 0, 0)
        while not self.closing:
            time.sleep(self.heartbeat_s / 2)
            now = time.monotonic()
            for peer in self.peers.values():
                if peer.state != "up" or now - peer.last_sent < self.heartbeat_s:
                    continue
                if not peer.out_lock.acquire(blocking=False):
                    continue  # a send is under way: it keeps the peer informed
                try:
                    peer.out_sock.sendall(frame)
                    peer.last_sent = now
                except OSError:
                    pass  # the reader side or the next send reports the broken channel
                finally:
                    peer.out_lock.release()

    def send(self, dst: int, group: int, payload) -> None:
        peer = self.peers[dst]
        if peer.state == "lost" or self.closing:
            with self.cond:
                self._raise_if_broken(peer)
        header = _FRAME.pack(_DATA, group, len(payload))
        view = memoryview(payload).cast("B") if len(payload) else memoryview(b"")
        with peer.out_lock:
            try:
                if len(view) <= 65536:
                    peer.out_sock.sendall(header + bytes(view))
                else:
                    peer.out_sock.sendall(header)
                    for start in range(0, len(view), _CHUNK):
                        peer.out_sock.sendall(view[start : start + _CHUNK])
            except socket.timeout as exc:
                raise PeerTimeoutError(
                    f"the {peer.role} at {peer.address} accepted no data for {self.net.peer_timeout_s:.0f} s: "
                    "it hangs, or the network between you is down (limit: --peer-timeout)"
                ) from exc
            except OSError as exc:
                with self.cond:
                    if peer.state == "up":
                        peer.state, peer.reason = "lost", _describe_oserror(exc)
                    self._raise_if_broken(peer)
                raise PeerLostError(f"lost the connection to the {peer.role}: {_describe_oserror(exc)}") from exc
            peer.last_sent = time.monotonic()

    def reserve(self, src: int, group: int) -> int:
        """The next message slot from ``src`` in ``group`` (receives match sends in order)."""
        peer = self.peers[src]
        with self.cond:
            seq = peer.reserved.get(group, 0)
            peer.reserved[group] = seq + 1
        return seq

    def take(self, src: int, group: int, slot: int) -> bytearray:
        """Wait for message ``slot`` from ``src`` in ``group``; raise if a peer is lost or silent."""
        peer = self.peers[src]
        with self.cond:
            while True:
                payload = peer.inbox.pop((group, slot), None)
                if payload is not None:
                    return payload
                self._raise_if_broken(peer)
                self.cond.wait(0.25)

    def _raise_if_broken(self, waiting_on: _Peer) -> None:
        for p in self.peers.values():
            if p.state == "lost" and p.aborted:
                raise PeerLostError(f"the {p.role} at {p.address} stopped: {p.reason}")
            if p.state == "lost":
                raise PeerLostError(
                    f"lost the connection to the {p.role} at {p.address} ({p.reason}): it stopped, or the "
                    "network failed; the run was abandoned"
                )
        if waiting_on.state == "bye":
            raise PeerLostError(f"the {waiting_on.role} ended the run while this {self.role} still expected data")
        if self.closing:
            raise PeerLostError("the connection to the other parties was closed")
        now = time.monotonic()
        for p in self.peers.values():
            silent = now - p.last_seen
            if p.state == "up" and silent > self.net.peer_timeout_s:
                raise PeerTimeoutError(
                    f"the {p.role} at {p.address} sent nothing for {silent:.0f} s: it hangs, or the network "
                    f"between you is down (limit: --peer-timeout {self.net.peer_timeout_s:g} s)"
                )

    def close(self, graceful: bool = True, reason: str | None = None) -> None:
        """Say goodbye (if ``graceful``), or why this party stops (``reason``), and close
        every channel; idempotent."""
        with self.cond:
            if self.closing:
                return
            self.closing = True
            self.close_reason = reason
            self.cond.notify_all()
        if self.listener is not None:
            self.listener.close()
        bye = _FRAME.pack(_BYE, 0, 0)
        for peer in self.peers.values():
            sock = peer.out_sock
            if sock is not None:
                if graceful and self.started and peer.out_lock.acquire(timeout=5.0):
                    try:
                        sock.settimeout(5.0)
                        sock.sendall(bye)
                    except OSError:
                        pass
                    finally:
                        peer.out_lock.release()
                elif reason and peer.state == "up" and peer.out_lock.acquire(timeout=1.0):
                    try:
                        _send_abort(sock, reason)
                    finally:
                        peer.out_lock.release()
                _close(sock)
            if peer.in_sock is not None:
                _close(peer.in_sock)
        for peer in self.peers.values():
            if peer.reader is not None and peer.reader is not threading.current_thread():
                peer.reader.join(2.0)


class _Refused(Exception):
    pass


class _Retry(Exception):
    pass


class _TLSBytes(ValueError):
    """The peer spoke TLS where a plain hello was expected."""


def _send_abort(sock, reason: str) -> None:
    try:
        sock.settimeout(2.0)
        text = reason.encode()[:4096]
        sock.sendall(_FRAME.pack(_ABORT, 0, len(text)) + text)
    except OSError:
        pass


def _close(sock) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes a reader blocked on this socket
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _incoming_problem(exc: BaseException, tls: bool) -> str:
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or exc}"
        if "UNKNOWN_CA" in text.upper() or "BAD_CERTIFICATE" in text.upper():
            return f"TLS handshake failed ({text}): the peer does not trust this party's certificate"
        if "CERTIFICATE" in text.upper():
            return f"TLS handshake failed ({text}): its certificate is not one of this party's pinned certificates"
        return f"TLS handshake failed ({text}); does it run with --no-tls?"
    if isinstance(exc, ValueError) and tls is False:
        return f"{exc} (does it use TLS while this party runs with --no-tls?)"
    return _describe_oserror(exc)


def _send_hello(sock, hello: dict) -> None:
    body = json.dumps(hello).encode()
    sock.sendall(_HELLO.pack(_MAGIC, len(body)) + body)


def _send_hello_quietly(sock, hello: dict) -> None:
    try:
        _send_hello(sock, hello)
    except OSError:
        pass


def _read_hello(sock) -> dict:
    head = _recv_all(sock, _HELLO.size)
    if head[0] in (0x15, 0x16) and head[1] == 0x03:
        raise _TLSBytes("it speaks TLS")
    magic, length = _HELLO.unpack(head)
    if magic != _MAGIC or length > 65536:
        raise ValueError("it does not speak the secptune transport")
    hello = json.loads(_recv_all(sock, length))
    if not isinstance(hello, dict):
        raise ValueError("malformed hello")
    return hello


def _recv_all(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


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

    def _take(self, src: int, group: Group, slot: int, like: torch.Tensor) -> torch.Tensor:
        payload = self._t().take(src, group.id, slot)
        expected = like.numel() * like.element_size()
        if len(payload) != expected:
            raise TransportError(
                f"protocol out of step: expected {expected} bytes from the {ROLES[src]}, got {len(payload)}; "
                "all parties must run the same secptune version"
            )
        if expected == 0:
            return torch.empty_like(like)
        return torch.frombuffer(payload, dtype=like.dtype).view(like.shape)

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
            parts = {r: self._take(r, group, slots[r], tensor) for r in sources}
            parts[me] = tensor.clone()
            ranks = sorted(parts)
            acc = parts[ranks[0]].clone()
            for r in ranks[1:]:
                combine(acc, parts[r])  # the same order in every process
            tensor.copy_(acc)

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
