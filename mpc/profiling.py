"""Where a party's time goes: cProfile per process, top entries as plain data (benchmarks only).

``secptune bench forward --profile`` sets :data:`PROFILE_ENV` before it spawns the parties;
every process of the run (owner, server, dealer) then profiles its part:

* the computing parties profile what their job wraps in :func:`profiled` (the benchmark:
  the first measured forward);
* the dealer profiles its whole serving loop (set-up and every forward of the session:
  it cannot tell one forward from the next), and also times each request kind
  (:class:`RequestTimes`: generation and sending, per request name).

Nothing here touches a share or a message: profiling only reads clocks.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import time
from collections import defaultdict

from mpc.roles import ROLES

PROFILE_ENV = "SECPTUNE_PROFILE"  # "1": summaries; a directory: also each party's raw pstats file there
TOP = 30  # entries kept per ordering

# functions whose own time is time spent waiting for a peer (blocking socket reads,
# lock waits in the transport): summed into "waiting_s"
_WAIT_NAMES = ("recv_into", "recv", "acquire", "wait", "select", "poll", "_recv_exact", "read")


def enabled() -> bool:
    return bool(os.environ.get(PROFILE_ENV))


def _label(func: tuple) -> str:
    filename, line, name = func
    if filename == "~":  # a builtin: "<method 'recv_into' of '_ssl._SSLSocket' objects>"
        return name
    parts = filename.replace("\\", "/").split("/")
    for root in ("mpc", "rfa", "secptune", "crypten", "torch", "cryptography"):
        if root in parts:
            parts = parts[len(parts) - 1 - parts[::-1].index(root) :]
            break
    else:
        parts = parts[-1:]
    return f"{'/'.join(parts)}:{line}({name})"


def summary(profile: cProfile.Profile, wall_s: float, top: int = TOP) -> dict:
    """Top entries by own time and by cumulative time, and the time spent in waits."""
    stats = pstats.Stats(profile)
    rows = []
    waiting = 0.0
    for func, (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        label = _label(func)
        rows.append({"function": label, "calls": calls, "own_s": round(tottime, 4), "cum_s": round(cumtime, 4)})
        if func[0] == "~" and any(w in func[2] for w in _WAIT_NAMES):
            waiting += tottime
    profiled_s = sum(r["own_s"] for r in rows)
    return {
        "wall_s": round(wall_s, 4),
        "profiled_s": round(profiled_s, 4),
        "waiting_s": round(waiting, 4),
        "note": "own_s: time in the function itself; cum_s: with its callees; waiting_s: own time of "
        "blocking reads and lock/condition waits (the peer or the dealer not ready yet)",
        "by_own_time": sorted(rows, key=lambda r: -r["own_s"])[:top],
        "by_cumulative_time": sorted(rows, key=lambda r: -r["cum_s"])[:top],
    }


def _dump_dir() -> str | None:
    value = os.environ.get(PROFILE_ENV, "")
    return value if value not in ("", "1") else None


@contextlib.contextmanager
def profiled(out: dict, key: str = "profile"):
    """Profile the block when :data:`PROFILE_ENV` is set; its :func:`summary` lands in ``out[key]``
    (and, when the variable names a directory, the raw stats in ``<role>.pstats`` there)."""
    if not enabled():
        yield
        return
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        out[key] = summary(profile, time.perf_counter() - started)
        folder = _dump_dir()
        if folder:
            os.makedirs(folder, exist_ok=True)
            profile.dump_stats(os.path.join(folder, f"{_role()}.pstats"))


def _role() -> str:
    rank = os.environ.get("RANK", "")  # set by mpc.session for each role's process
    return ROLES[int(rank)] if rank.isdigit() and int(rank) < len(ROLES) else f"pid{os.getpid()}"


class RequestTimes:
    """The dealer's seconds per request name: generating the reply and sending it."""

    def __init__(self):
        self.times: dict[str, dict] = defaultdict(lambda: {"requests": 0, "generate_s": 0.0, "send_s": 0.0})

    def add(self, name: str, generate_s: float, send_s: float) -> None:
        entry = self.times[name]
        entry["requests"] += 1
        entry["generate_s"] += generate_s
        entry["send_s"] += send_s

    def as_dict(self) -> dict:
        return {name: {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}
                for name, entry in sorted(self.times.items(), key=lambda kv: -kv[1]["generate_s"])}
