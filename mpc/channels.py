"""The secptune transport's channels: one TLS (or, on loopback, TCP) connection per ordered pair of parties.

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

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from mpc import tls, wire
from mpc.errors import PeerLostError, PeerTimeoutError, StartupError, TransportError
from mpc.net import Address, Network, listen_problem
from mpc.roles import ROLES


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



class Transport:
    """The channels of one party of a run: start them, send, receive, close."""

    def __init__(self, network: Network, log=wire.log, listener: socket.socket | None = None):
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
        return {"protocol": wire.PROTOCOL, "version": self.net.version, "role": self.role, "rank": self.rank,
                "tls": self.creds is not None, "status": status}

    def _version_problem(self, hello: dict, peer_role: str, where: str) -> str | None:
        if hello.get("protocol") == wire.PROTOCOL and hello.get("version") == self.net.version:
            return None
        return (
            f"version mismatch: this {self.role} runs secptune {self.net.version or '?'} (transport {wire.PROTOCOL}), "
            f"the {peer_role} {where} runs {hello.get('version') or '?'} (transport {hello.get('protocol')}); "
            "install the same secptune version on all three hosts"
        )

    def _check_certificate(self, sock, role: str, where: str) -> None:
        if self.creds is None:
            return
        got = tls.fingerprint(sock.getpeercert(binary_form=True))
        if got != self.creds.fingerprints[role]:
            raise wire.Refused(
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
            sock.settimeout(wire.HANDSHAKE_S)
            if self.creds is not None:
                sock = self.creds.server_context.wrap_socket(sock, server_side=True)
            hello = wire.read_hello(sock)
            rank = hello.get("rank")
            peer = self.peers.get(rank) if isinstance(rank, int) else None
            if peer is None or hello.get("role") != ROLES[rank]:
                raise wire.Refused(f"a party {where} claims to be {hello.get('role')!r} (rank {rank}), which this "
                               f"{self.role} does not expect")
            self._check_certificate(sock, peer.role, where)
            problem = self._version_problem(hello, peer.role, where)
            if problem:
                wire.send_hello(sock, self._hello(problem))
                self._fail(StartupError(problem))
                sock.close()
                return
            with self.cond:
                busy = peer.in_sock is not None or self.closing
                if not busy:
                    peer.in_sock = sock  # claimed: a second connection for this role is turned away
            if busy:
                wire.send_hello(sock, self._hello("busy"))
                sock.close()
                return
            try:
                wire.send_hello(sock, self._hello())
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
        except wire.Refused as exc:
            self.refused = str(exc)
            self.log(f"refused a connection: {exc}")
            wire.send_hello_quietly(sock, self._hello(str(exc)))
            sock.close()
        except wire.TLSBytes:
            self.refused = f"from {addr[0]}: it uses TLS, this party runs with --no-tls"
            self.log(f"refused a connection {self.refused}")
            wire.send_hello_quietly(sock, self._hello(wire.NO_TLS))  # a TLS client reads this as a plain-text answer
            sock.close()
        except (OSError, ValueError, EOFError) as exc:
            self.refused = f"from {addr[0]}: {wire.incoming_problem(exc, self.creds is not None)}"
            self.log(f"refused a connection {self.refused}")
            sock.close()

    def _connect_loop(self, peer: _Peer) -> None:
        backoff = 0.1
        while not self.closing and self.problem is None:
            try:
                sock = self._connect_once(peer)
            except wire.Retry as exc:
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
                        wire.send_abort(sock, self.close_reason)
                    wire.close_socket(sock)
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
            raise wire.Retry(wire.describe_oserror(exc)) from exc
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(wire.HANDSHAKE_S)
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
                        raise wire.Retry("it closed the connection during the TLS handshake; it may be starting, "
                                     "or run with --no-tls") from exc
                    raise StartupError(
                        f"TLS handshake with the {peer.role} {where} failed ({exc.reason or exc}): it probably runs "
                        "with --no-tls; all three parties need --tls-dir (or, all on loopback, --no-tls)"
                    ) from exc
                except OSError as exc:
                    raise wire.Retry(f"TLS handshake failed ({wire.describe_oserror(exc)})") from exc
                self._check_certificate(sock, peer.role, where)
            try:
                wire.send_hello(sock, self._hello())
                reply = wire.read_hello(sock)
            except ssl.SSLError as exc:
                raise StartupError(
                    f"the {peer.role} {where} refused this {self.role}'s certificate ({exc.reason or exc}): "
                    f"give it {self.role}.crt from this party's --tls-dir (docs/deployment.md)"
                ) from exc
            except (EOFError, ConnectionError) as exc:
                raise wire.Retry(f"it closed the connection during the hello ({wire.describe_oserror(exc)})") from exc
            except socket.timeout as exc:
                raise wire.Retry("no hello within the handshake time") from exc
            except wire.TLSBytes as exc:
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
                raise wire.Retry(f"the {peer.role} is busy with another run")
            if reply.get("status") == wire.NO_TLS and self.creds is not None:
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
            k = sock.recv_into(view[got:], min(n - got, wire.CHUNK))
            if k == 0:
                raise EOFError("connection closed")
            got += k
            peer.last_seen = time.monotonic()
        return buf

    def _read_loop(self, peer: _Peer, sock) -> None:
        try:
            while True:
                kind, group, length = wire.FRAME.unpack(self._recv_exact(peer, sock, wire.FRAME.size))
                peer.last_seen = time.monotonic()
                if kind == wire.HEARTBEAT:
                    continue
                if kind == wire.BYE:
                    with self.cond:
                        if peer.state == "up":
                            peer.state = "bye"
                        self.cond.notify_all()
                    return
                if kind == wire.ABORT:
                    message = self._recv_exact(peer, sock, min(length, 4096)).decode(errors="replace")
                    with self.cond:
                        if peer.state == "up":
                            peer.state, peer.reason, peer.aborted = "lost", message, True
                        self.cond.notify_all()
                    return
                if kind != wire.DATA:
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
                    peer.reason = "connection closed" if isinstance(exc, EOFError) else wire.describe_oserror(exc)
                self.cond.notify_all()

    def _heartbeat_loop(self) -> None:
        frame = wire.FRAME.pack(wire.HEARTBEAT, 0, 0)
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
        header = wire.FRAME.pack(wire.DATA, group, len(payload))
        view = memoryview(payload).cast("B") if len(payload) else memoryview(b"")
        with peer.out_lock:
            try:
                if len(view) <= 65536:
                    peer.out_sock.sendall(header + bytes(view))
                else:
                    peer.out_sock.sendall(header)
                    for start in range(0, len(view), wire.CHUNK):
                        peer.out_sock.sendall(view[start : start + wire.CHUNK])
            except socket.timeout as exc:
                raise PeerTimeoutError(
                    f"the {peer.role} at {peer.address} accepted no data for {self.net.peer_timeout_s:.0f} s: "
                    "it hangs, or the network between you is down (limit: --peer-timeout)"
                ) from exc
            except OSError as exc:
                with self.cond:
                    if peer.state == "up":
                        peer.state, peer.reason = "lost", wire.describe_oserror(exc)
                    self._raise_if_broken(peer)
                raise PeerLostError(f"lost the connection to the {peer.role}: {wire.describe_oserror(exc)}") from exc
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
        bye = wire.FRAME.pack(wire.BYE, 0, 0)
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
                        wire.send_abort(sock, reason)
                    finally:
                        peer.out_lock.release()
                wire.close_socket(sock)
            if peer.in_sock is not None:
                wire.close_socket(peer.in_sock)
        for peer in self.peers.values():
            if peer.reader is not None and peer.reader is not threading.current_thread():
                peer.reader.join(2.0)
