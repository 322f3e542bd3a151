"""Helpers and party jobs for the deployment tests (module level: spawned processes import them)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import torch

from mpc.net import Address, Network
from mpc.tls import role_dirs as make_tls_dirs  # noqa: F401 - the tests import it from here

ROLES = ("owner", "server", "dealer")
MARK = "SECPTUNE_TEST_MARK"


# -- networks and keys ------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loopback_peers(ports) -> tuple[Address, Address, Address]:
    return tuple(Address("127.0.0.1", p) for p in ports)  # type: ignore[return-value]


def network(role: str, peers, tls_dirs: dict | None = None, **kw) -> Network:
    kw.setdefault("version", "0.1.0")
    kw.setdefault("connect_timeout_s", 20.0)
    kw.setdefault("peer_timeout_s", 10.0)
    tls_dir = tls_dirs.get(role) if tls_dirs else None
    return Network(peers, role, tls_dir=str(tls_dir) if tls_dir else None, **kw)


# -- processes ----------------------------------------------------------------------
def new_mark() -> str:
    return f"deploy-{uuid.uuid4().hex}"


def marked_processes(mark: str) -> list:
    """Live processes (other than this one) started while ``mark`` was in the environment."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK) != mark or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(proc.cmdline()):
                continue  # the test runner's own multiprocessing helper; it ends with the runner
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def leftovers(mark: str, wait_s: float = 15.0) -> list[str]:
    """Processes of this test still running after ``wait_s``; kills them and returns their descriptions."""
    import psutil

    deadline = time.monotonic() + wait_s
    left = marked_processes(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = marked_processes(mark)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return described


# -- an eavesdropper / a network that fails --------------------------------------------
class Relay(threading.Thread):
    """A TCP relay that records every byte it forwards; it can freeze (drop silently) or cut."""

    def __init__(self, upstream_port: int):
        super().__init__(daemon=True)
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []
        self.lock = threading.Lock()
        self.frozen = threading.Event()
        self.closed = False
        self.socks: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                buf = bytearray()
                with self.lock:
                    self.streams.append(buf)
                    self.socks.append(a)
                threading.Thread(target=self._pump, args=(a, b, buf), daemon=True).start()

    def _pump(self, src, dst, buf) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                buf += data
                while self.frozen.is_set():
                    time.sleep(0.05)  # a dead link: nothing arrives, nothing is refused
                dst.sendall(data)
        except OSError:
            pass
        finally:
            while self.frozen.is_set() and not self.closed:
                time.sleep(0.05)  # a dead link does not carry the close either
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass

    def captured(self) -> list[bytes]:
        with self.lock:
            return [bytes(b) for b in self.streams]


# -- party jobs ------------------------------------------------------------------------
def compute_forever():
    """Both computing parties: products of shared values until a peer goes away."""
    import crypten

    while True:
        x = crypten.cryptensor(torch.ones(64), src=0)
        (x * x).sum()


def compute_then(steps: int, what: str, stamp: str):
    """A server that computes ``steps`` products, then dies (``exit``) or freezes (``stop``);
    it writes the wall-clock time of that moment to ``stamp``."""
    import crypten

    for _ in range(steps):
        x = crypten.cryptensor(torch.ones(64), src=0)
        (x * x).sum()
    Path(stamp).write_text(repr(time.time()))
    if what == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGSTOP)  # a frozen process: no data, no heartbeats
    time.sleep(3600)


def open_secret(secret: torch.Tensor | None, shape):
    """Owner shares ``secret``; both open it to each other (each sends its share across)."""
    import crypten

    x = crypten.cryptensor(secret if secret is not None else torch.zeros(shape), src=0)
    share = x._tensor.share.clone()
    plain = x.get_plain_text()
    return {"share": share, "plain": plain}


def open_secret_when(secret: torch.Tensor | None, shape, ready: str, go: str):
    """:func:`open_secret` once the test says so: writes ``ready`` (this party's session is
    up), waits for ``go`` to exist, then opens."""
    Path(ready).write_text("up")
    deadline = time.monotonic() + 300
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} did not appear")
        time.sleep(0.05)
    return open_secret(secret, shape)


# -- an intruder: another local process that tries to take a party's role ----------------
def _claim(port: int, role: str, use_tls: bool, tls_context, version: str, timeout_s: float, held: list) -> dict:
    """Connect to ``port`` and say "I am ``role``" as a party's hello does; accepted when the
    listener answers its hello with status ok (it then holds this connection as that role;
    the connection goes to ``held``, so that the role stays taken)."""
    import json
    import ssl
    import struct

    from mpc.wire import PROTOCOL

    record = {"port": port, "role": role, "tls": use_tls, "accepted": False, "answer": ""}
    hello = json.dumps({"protocol": PROTOCOL, "version": version, "role": role, "rank": ROLES.index(role),
                        "tls": use_tls, "status": "ok"}).encode()
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if use_tls:
            sock = tls_context.wrap_socket(sock)
        sock.sendall(struct.pack("!4sI", b"SPTN", len(hello)) + hello)
        head = b""
        while len(head) < 8:
            chunk = sock.recv(8 - len(head))
            if not chunk:
                raise EOFError("the listener closed the connection")
            head += chunk
        magic, length = struct.unpack("!4sI", head)
        body = b""
        while magic == b"SPTN" and len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                raise EOFError("the listener closed the connection")
            body += chunk
        reply = json.loads(body) if magic == b"SPTN" else {"status": f"not a hello: {head!r}"}
        record["answer"] = str(reply.get("status"))
        record["accepted"] = reply.get("status") == "ok"
    except (OSError, ValueError, EOFError, ssl.SSLError) as exc:
        record["answer"] = f"{type(exc).__name__}: {exc}"
    if record["accepted"]:
        held.append(sock)
    elif sock is not None:
        sock.close()
    return record


def _claim_all(ports, version: str, tls_context, timeout_s: float) -> list[dict]:
    """Every role on every port, in plain TCP and in TLS, all at once (so that some tries
    arrive before the real parties do)."""
    records: list[dict] = []
    held: list = []
    lock = threading.Lock()

    def one(*args):
        record = _claim(*args, tls_context, version, timeout_s, held)
        with lock:
            records.append(record)

    threads = [threading.Thread(target=one, args=(port, role, use_tls), daemon=True)
               for port in ports for role in ROLES for use_tls in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s + 5)
    for sock in held:
        sock.close()
    return records


def intrude(ports_file: str, out_file: str, ready_files=(), version: str = "", timeout_s: float = 60.0) -> None:
    """The intruder process: waits for ``ports_file`` (JSON list of ports), claims every role
    there at once; if ``ready_files`` are given, waits for them and does it again; writes
    every try to ``out_file`` (JSON).  ``out_file.armed`` appears once it is ready to strike.  Its TLS tries present a key and certificate of its own."""
    import json
    import ssl
    import tempfile

    from mpc import tls

    def wait_for(path):
        deadline = time.monotonic() + 300
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear")
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as keys:
        tls.keygen("owner", keys)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the intruder trusts whatever answers
        ctx.load_cert_chain(Path(keys) / "owner.crt", Path(keys) / "owner.key")
        Path(f"{out_file}.armed").write_text("armed")
        wait_for(ports_file)
        ports = json.loads(Path(ports_file).read_text())
        rounds = [_claim_all(ports, version, ctx, timeout_s)]
        if ready_files:
            for path in ready_files:
                wait_for(path)
            rounds.append(_claim_all(ports, version, ctx, timeout_s))
    Path(out_file).write_text(json.dumps(rounds))
