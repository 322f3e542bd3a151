"""What every benchmark report records about how and where it was made.

Bytes and rounds of a secure run depend only on the code and the shapes; times depend on the
machine and its load.  A report therefore names the command that wrote it, the git revision of the
code (and whether the checkout had uncommitted changes), and the machine.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from pathlib import Path

from mpc import prg
from secptune.errors import SecptuneError

# the checkout secptune runs from (when it runs from one): the code a report's figures belong to
SOURCE_ROOT = Path(__file__).resolve().parents[2]
RING_MATMUL_ENV = "MPC_RING_MATMUL"  # mpc.ring: which kernel every party's int64 products use


class BenchError(SecptuneError):
    """A benchmark setting that cannot run here; the message says what to change."""


def machine_info() -> dict:
    """The machine a report was measured on (timings depend on it; bytes do not)."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def git_revision(root: Path = SOURCE_ROOT) -> tuple[str | None, bool | None]:
    """(short commit, uncommitted changes to tracked files?) of the checkout at ``root``;
    (None, None) when the code does not run from a git checkout (an installed wheel) or git is missing."""

    def git(*argv: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():  # not this code's own checkout
        return None, None
    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else status != ""


def command_line(argv: list[str], program: tuple[str, ...] = ("secptune",)) -> str:
    """The command as a shell line, with the ring-kernel setting it ran under when one was forced."""
    kernel = os.environ.get(RING_MATMUL_ENV)
    return (f"{RING_MATMUL_ENV}={kernel} " if kernel else "") + shlex.join([*program, *argv])


def provenance(command: str) -> dict:
    """The fields every report gets: ``command``, ``git_revision``, ``git_dirty``, ``machine``; and
    ``test_only_rng`` when the masks came from the tests' insecure generator (mpc.prg), which a
    benchmark may use to measure what the secure one costs."""
    commit, dirty = git_revision()
    out = {"command": command, "git_revision": commit, "git_dirty": dirty, "machine": machine_info()}
    insecure = os.environ.get(prg.TEST_ONLY_ENV)
    if insecure:
        out["test_only_rng"] = insecure
    return out
