"""Three hosts on one machine: a network namespace per party, joined by emulated links.

For tests and benchmarks (``secptune bench net``).  A :class:`Testbed` makes one
namespace per role (``owner``, ``server``, ``dealer``), each with one interface
``eth0`` at ``10.<net>.0.<rank+1>/24``, and runs commands inside them with
``ip netns exec``.  Two ways to join them:

* ``veth`` (kernel): a veth pair from each party to a bridge in a fourth
  namespace.  With a :class:`mpc.costmodel.Link`, ``tc netem`` on each party's
  ``eth0`` adds the link's one-way delay and rate to everything that party sends.
* ``wire`` (userspace): a TUN device per party; a thread of this process reads
  every IP packet a party sends and writes it into the destination's TUN device
  after the same delay and serialisation time (a FIFO link per sender, like
  netem's ``rate`` on the sender's egress, with an unbounded queue).  Used when
  the kernel has no ``sch_netem`` (many VM kernels); TCP sees the real delay, so
  slow start, window growth and ACK clocking behave as on a real link.  The
  thread asks for real-time scheduling (as root) so that a busy CPU does not
  add to the emulated delay.

Both model each host's uplink: bandwidth ``B`` and one-way delay ``d`` on what it
sends, so a message between any two parties takes ``d + size/B`` and a round
trip ``2d``.  Needs root (or CAP_NET_ADMIN) and ``ip`` from iproute2;
:func:`unavailable` says why not where it cannot work.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import os
import selectors
import shutil
import struct
import subprocess
import threading
import time

from mpc.roles import ROLES

_COUNTER = itertools.count()
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_WIRE_MTU = 65000


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


_CACHE: dict[str, object] = {}


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if "unavailable" not in _CACHE:
        _CACHE["unavailable"] = _probe()
    return _CACHE["unavailable"]  # type: ignore[return-value]


def _probe() -> str | None:
    if not hasattr(os, "geteuid") or os.uname().sysname != "Linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"sptprobe{os.getpid()}"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        return f"creating a network namespace is not permitted here ({made.stderr.strip() or 'ip netns add failed'})"
    try:
        veth = _run("ip", "-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False)
        if veth.returncode != 0:
            return f"veth links are not available ({veth.stderr.strip()})"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (``tc qdisc ... netem``)."""
    if "netem" not in _CACHE:
        ok = False
        if unavailable() is None and shutil.which("tc"):
            name = f"sptnetem{os.getpid()}"
            if _run("ip", "netns", "add", name, check=False).returncode == 0:
                try:
                    _run("ip", "-n", name, "link", "set", "lo", "up", check=False)
                    ok = _run("tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                              check=False).returncode == 0
                finally:
                    _run("ip", "netns", "del", name, check=False)
        _CACHE["netem"] = ok
    return bool(_CACHE["netem"])


class Testbed:
    """Namespaces for owner, server and dealer; use as a context manager.

    ``link`` (a :class:`mpc.costmodel.Link` or None for no emulation) applies to
    every party's uplink.  ``kind`` is ``veth``, ``wire`` or ``auto`` (veth, or
    wire when a link is asked for and the kernel lacks netem).
    """

    def __init__(self, link=None, kind: str = "auto"):
        if kind == "auto":
            kind = "wire" if link is not None and not netem_available() else "veth"
        if kind not in ("veth", "wire"):
            raise ValueError(f"kind must be veth, wire or auto, not {kind!r}")
        self.link = link
        self.kind = kind
        n = next(_COUNTER)
        self.tag = f"spt{os.getpid() % 100000}x{n}"
        subnet = 10 + (os.getpid() + n) % 200
        self.ns = {role: f"{self.tag}{role[0]}" for role in ROLES}
        self.switch = f"{self.tag}w"
        self.addresses = {role: f"10.{subnet}.0.{rank + 1}" for rank, role in enumerate(ROLES)}
        self._made: list[str] = []
        self._wire: _Wire | None = None

    def describe(self) -> str:
        if self.link is None:
            return f"{self.kind}, no emulation"
        how = "netem" if self.kind == "veth" else "userspace wire"
        return (f"{self.kind} ({how}): {self.link.bandwidth_bps / 1e6:g} Mbit/s, "
                f"{self.link.latency_s * 1e3:g} ms one-way")

    def __enter__(self) -> "Testbed":
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _setup(self) -> None:
        for role in ROLES:
            self._add_ns(self.ns[role])
        if self.kind == "veth":
            self._add_ns(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for role in ROLES:
                ns, port = self.ns[role], f"p{role[0]}"
                _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
                _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
                _run("ip", "-n", self.switch, "link", "set", port, "up")
                self._address(role)
                if self.link is not None:
                    _run("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "netem",
                         "delay", f"{self.link.latency_s * 1e6:.0f}us",
                         "rate", f"{self.link.bandwidth_bps:.0f}bit", "limit", "100000")
        else:
            fds = {}
            for rank, role in enumerate(ROLES):
                name = f"{self.tag}t{rank}"
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                fds[role] = fd
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
                _run("ip", "link", "set", name, "netns", self.ns[role])
                _run("ip", "-n", self.ns[role], "link", "set", name, "name", "eth0")
                _run("ip", "-n", self.ns[role], "link", "set", "eth0", "mtu", str(_WIRE_MTU), "txqueuelen", "10000")
                self._address(role)
            self._wire = _Wire(fds, self.addresses, self.link)
            self._wire.start()

    def _address(self, role: str) -> None:
        ns = self.ns[role]
        _run("ip", "-n", ns, "addr", "add", f"{self.addresses[role]}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def cmd(self, role: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``role``'s namespace."""
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def popen(self, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` in ``role``'s namespace in a new session (its own process group)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.cmd(role, argv), **kwargs)

    def set_link_up(self, role: str, up: bool) -> None:
        """Cut (or restore) ``role``'s network link, as a pulled cable would."""
        _run("ip", "-n", self.ns[role], "link", "set", "eth0", "up" if up else "down")

    def close(self) -> None:
        if self._wire is not None:
            self._wire.stop()
            self._wire = None
        for name in reversed(self._made):
            _run("ip", "netns", "del", name, check=False)
        self._made = []


class _Wire(threading.Thread):
    """Userspace links between TUN devices: delay and rate per sender, FIFO."""

    def __init__(self, fds: dict[str, int], addresses: dict[str, str], link):
        super().__init__(name="secptune-wire", daemon=True)
        self.fds = fds
        self.by_ip = {bytes(int(x) for x in addresses[role].split(".")): role for role in addresses}
        self.delay = link.latency_s if link is not None else 0.0
        self.bps = link.bandwidth_bps if link is not None else None
        self.halt = threading.Event()
        self.free = {role: 0.0 for role in fds}  # when each sender's uplink is free again

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def run(self) -> None:
        try:  # wake on time even on a busy machine: real-time scheduling for this thread (root)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (AttributeError, OSError):
            pass
        sel = selectors.DefaultSelector()
        for role, fd in self.fds.items():
            sel.register(fd, selectors.EVENT_READ, role)
        due: list = []  # (arrival time, seq, destination fd, packet)
        seq = itertools.count()
        while not self.halt.is_set():
            wait = 0.05 if not due else min(0.05, max(0.0, due[0][0] - time.monotonic()))
            for key, _ in sel.select(wait):
                src = key.data
                while True:
                    try:
                        packet = os.read(key.fd, _WIRE_MTU + 100)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    dst = self.by_ip.get(packet[16:20]) if packet and packet[0] >> 4 == 4 else None
                    if dst is None or dst == src:
                        continue
                    now = time.monotonic()
                    start = max(now, self.free[src])
                    sent = start + (len(packet) * 8 / self.bps if self.bps else 0.0)
                    self.free[src] = sent
                    heapq.heappush(due, (sent + self.delay, next(seq), self.fds[dst], packet))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, fd, packet = heapq.heappop(due)
                try:
                    os.write(fd, packet)
                except BlockingIOError:
                    heapq.heappush(due, (now + 0.0005, next(seq), fd, packet))
                    break
                except OSError:
                    pass
