"""The secptune transport's wire format: hellos, frames, and what a failed socket means.

Every message between two parties is a frame (kind, group, payload length) on one
TCP/TLS connection; a connection opens with a hello (role, version, protocol) each
way.  :mod:`mpc.channels` speaks it; nothing here holds state.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import struct
import sys

PROTOCOL = 1  # wire format version; parties with different values refuse each other
MAGIC = b"SPTN"
HELLO = struct.Struct("!4sI")
FRAME = struct.Struct("!BIQ")  # kind, group, payload length
DATA, HEARTBEAT, BYE, ABORT = 1, 2, 3, 4
CHUNK = 1 << 20  # sends are cut into chunks, so a send times out only when no chunk moves
HANDSHAKE_S = 15.0
NO_TLS = "this party runs without TLS (--no-tls)"


def log(message: str) -> None:
    print(f"secptune transport: {message}", file=sys.stderr, flush=True)



def describe_oserror(exc: BaseException) -> str:
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



class Refused(Exception):
    pass


class Retry(Exception):
    pass


class TLSBytes(ValueError):
    """The peer spoke TLS where a plain hello was expected."""


def send_abort(sock, reason: str) -> None:
    try:
        sock.settimeout(2.0)
        text = reason.encode()[:4096]
        sock.sendall(FRAME.pack(ABORT, 0, len(text)) + text)
    except OSError:
        pass


def close_socket(sock) -> None:
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes a reader blocked on this socket
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def incoming_problem(exc: BaseException, tls: bool) -> str:
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or exc}"
        if "UNKNOWN_CA" in text.upper() or "BAD_CERTIFICATE" in text.upper():
            return f"TLS handshake failed ({text}): the peer does not trust this party's certificate"
        if "CERTIFICATE" in text.upper():
            return f"TLS handshake failed ({text}): its certificate is not one of this party's pinned certificates"
        return f"TLS handshake failed ({text}); does it run with --no-tls?"
    if isinstance(exc, ValueError) and tls is False:
        return f"{exc} (does it use TLS while this party runs with --no-tls?)"
    return describe_oserror(exc)


def send_hello(sock, hello: dict) -> None:
    body = json.dumps(hello).encode()
    sock.sendall(HELLO.pack(MAGIC, len(body)) + body)


def send_hello_quietly(sock, hello: dict) -> None:
    try:
        send_hello(sock, hello)
    except OSError:
        pass


def read_hello(sock) -> dict:
    head = recv_all(sock, HELLO.size)
    if head[0] in (0x15, 0x16) and head[1] == 0x03:
        raise TLSBytes("it speaks TLS")
    magic, length = HELLO.unpack(head)
    if magic != MAGIC or length > 65536:
        raise ValueError("it does not speak the secptune transport")
    hello = json.loads(recv_all(sock, length))
    if not isinstance(hello, dict):
        raise ValueError("malformed hello")
    return hello


def recv_all(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf
