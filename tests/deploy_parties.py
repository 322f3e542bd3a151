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
