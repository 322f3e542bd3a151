"""What a network link adds to a secure computation, from its measured traffic.

A run that moved ``bytes`` in ``rounds`` blocking exchanges over a link of
``bandwidth`` bits/s and one-way ``latency`` seconds pays, on top of compute,
about ``rounds * latency + bytes * 8 / bandwidth`` (each round waits one link
latency for the peer's message; both directions transfer at once, so the larger
sender's bytes bound the transfer time).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpc.roles import COMPUTING


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bps: float
    latency_s: float

    def added_s(self, nbytes: int, rounds: int) -> float:
        """Seconds this link adds for ``nbytes`` sent (by the busier party) in ``rounds``."""
        return rounds * self.latency_s + nbytes * 8 / self.bandwidth_bps


LAN = Link("LAN", 3e9, 0.8e-3)  # the paper's LAN: 3 Gbps, 0.8 ms
WAN = Link("WAN", 100e6, 80e-3)  # the paper's WAN settings
WAN_FAST = Link("WAN-200", 200e6, 40e-3)
LINKS = (LAN, WAN, WAN_FAST)


def link_times(comm: dict, links=LINKS) -> dict[str, float]:
    """``{link name: added seconds}`` from ``comm`` = {party: {"bytes", "rounds"}}.

    Only the two computing parties' online traffic counts here (the dealer's can be
    produced ahead of time); the busier party bounds both bytes and rounds.
    """
    parties = [comm[p] for p in COMPUTING if p in comm]
    nbytes = max(p["bytes"] for p in parties)
    rounds = max(p["rounds"] for p in parties)
    return {link.name: link.added_s(nbytes, rounds) for link in links}
