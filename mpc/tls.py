"""Keys and TLS contexts for the parties' channels (mutual authentication, pinned certificates).

Each party makes its own key pair once (``secptune keygen --role R --out DIR``:
``R.key`` stays on that host, ``R.crt`` is given to the other two).  A party's
``--tls-dir`` holds its own ``ROLE.key`` and ``ROLE.crt`` and the other two
parties' certificates (``owner.crt``, ``server.crt``, ``dealer.crt``).  There is
no certificate authority: each party trusts exactly the two certificates it was
given, and a connection is accepted only if the peer proves it holds the key of
the certificate pinned for the role it claims (checked by SHA-256 fingerprint
after a TLS 1.3 handshake in which both sides present certificates).  Addresses
are not checked against the certificates, so parties can be addressed by IP.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mpc.errors import NetworkConfigError
from mpc.roles import ROLES


def fingerprint(cert_der: bytes) -> str:
    """SHA-256 fingerprint, as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(cert_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _cert_der(path: Path) -> bytes:
    try:
        return ssl.PEM_cert_to_DER_cert(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise NetworkConfigError(f"{path} is not a PEM certificate ({exc}); make one with `secptune keygen`") from exc


@dataclass(frozen=True)
class Credentials:
    """This party's key and certificate, and the certificates of all three roles."""

    role: str
    key: Path
    certs: dict  # role -> Path

    @cached_property
    def fingerprints(self) -> dict[str, str]:
        return {role: fingerprint(_cert_der(path)) for role, path in self.certs.items()}

    def _context(self, purpose: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if purpose == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False  # peers are pinned by certificate, not by name
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(self.certs[self.role], self.key)
            for role, path in self.certs.items():
                if role != self.role:
                    ctx.load_verify_locations(cafile=str(path))
        except ssl.SSLError as exc:
            raise NetworkConfigError(
                f"cannot use the TLS files in {self.key.parent} ({exc.reason or exc}): "
                f"{self.key.name} must be the key of {self.role}.crt; remake both with `secptune keygen`"
            ) from exc
        return ctx

    @cached_property
    def server_context(self) -> ssl.SSLContext:
        ctx = self._context(ssl.PROTOCOL_TLS_SERVER)
        ctx.num_tickets = 0  # channels are one-way after the hello: nothing unread must wait in them
        return ctx

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.PROTOCOL_TLS_CLIENT)


def load(tls_dir: str, role: str) -> Credentials:
    """The credentials in ``tls_dir`` for ``role``; a plain error names any missing file."""
    root = Path(tls_dir)
    if not root.is_dir():
        raise NetworkConfigError(f"--tls-dir {tls_dir!r} is not a directory; make keys with `secptune keygen`")
    key = root / f"{role}.key"
    if not key.is_file():
        raise NetworkConfigError(
            f"{key} is missing: this {role}'s private key; make it here with `secptune keygen --role {role} --out {root}`"
        )
    certs = {}
    for r in ROLES:
        path = root / f"{r}.crt"
        if not path.is_file():
            whose = "this party's certificate (from `secptune keygen`)" if r == role else f"the {r}'s certificate"
            raise NetworkConfigError(f"{path} is missing: copy {whose} there; see docs/deployment.md")
        certs[r] = path
    creds = Credentials(role, key, certs)
    fps = creds.fingerprints
    if len(set(fps.values())) != 3:
        raise NetworkConfigError(
            f"two of owner.crt, server.crt, dealer.crt in {root} are the same certificate; each role needs its own"
        )
    return creds


def keygen(role: str, out_dir: str, days: int = 3650) -> tuple[Path, Path, str]:
    """Make ``ROLE.key`` (mode 0600) and a self-signed ``ROLE.crt`` in ``out_dir`` with openssl."""
    if role not in ROLES:
        raise NetworkConfigError(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise NetworkConfigError("`openssl` was not found on PATH; install it (e.g. apt-get install openssl) to make keys")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    key, cert = root / f"{role}.key", root / f"{role}.crt"
    if key.exists() or cert.exists():
        raise NetworkConfigError(f"{key} or {cert} already exists; delete both to make a new key pair")
    old_umask = os.umask(0o077)
    try:
        proc = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", str(days), "-subj", f"/CN=secptune-{role}"],
            capture_output=True, text=True,
        )
    finally:
        os.umask(old_umask)
    if proc.returncode != 0:
        for path in (key, cert):
            path.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise NetworkConfigError(f"openssl could not make the key pair: {last}")
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return key, cert, fingerprint(_cert_der(cert))


def role_dirs(root: Path, roles=ROLES) -> dict[str, Path]:
    """A key pair per role under ``root/made``, then one ``--tls-dir`` per role holding its
    own key and every role's certificate — the layout each party is handed (tests, benches)."""
    made = root / "made"
    for role in roles:
        keygen(role, str(made))
    dirs = {}
    for role in roles:
        d = root / role
        d.mkdir(parents=True, exist_ok=True)
        for r in roles:
            shutil.copy(made / f"{r}.crt", d / f"{r}.crt")
        shutil.copy(made / f"{role}.key", d / f"{role}.key")
        dirs[role] = d
    return dirs
