"""What a network link adds to a secure computation, from its measured traffic.

A run that moved ``bytes`` in ``rounds`` blocking exchanges over a link of
``bandwidth`` bits/s and one-way ``latency`` seconds pays, on top of compute,
about ``rounds * latency + bytes * 8 / bandwidth`` (each round waits one link
latency for the peer's message; both directions transfer at once, so the larger
sender's bytes bound the transfer time).

The dealer is a third host.  :func:`link_times` leaves it out (its randomness can be
produced ahead of time); :func:`link_times_with_dealer` puts it on the same kind of link
and charges what this implementation does today — each request answered during the
computation, a synchronous round trip, and the dealer's bytes at the link's bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpc.roles import COMPUTING, ROLES


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
# dealer-channel rounds the owner counts per request: its request, the reply's size, the reply
REQUEST_ROUNDS = 3


def link_times(comm: dict, links=LINKS) -> dict[str, float]:
    """``{link name: added seconds}`` from ``comm`` = {party: {"bytes", "rounds"}}.

    Only the two computing parties' online traffic counts here (the dealer's can be
    produced ahead of time); the busier party bounds both bytes and rounds.
    """
    parties = [comm[p] for p in COMPUTING if p in comm]
    nbytes = max(p["bytes"] for p in parties)
    rounds = max(p["rounds"] for p in parties)
    return {link.name: link.added_s(nbytes, rounds) for link in links}


def dealer_added_s(dealer_bytes: int, requests: float, link: Link) -> float:
    """Seconds the dealer's link adds: one round trip per request plus its bytes (no overlap
    with the online traffic assumed: an upper bound for a dealer answering on demand)."""
    return requests * 2 * link.latency_s + dealer_bytes * 8 / link.bandwidth_bps


def link_times_with_dealer(comm: dict, links=LINKS) -> dict[str, float]:
    """``{link name: added seconds}`` for the online traffic (:func:`link_times`) plus the
    dealer's as a third host on the same link.  ``comm["dealer"]``: ``bytes`` the dealer sent
    and ``rounds`` = the owner's dealer-channel rounds (REQUEST_ROUNDS per request)."""
    online = link_times(comm, links)
    dealer = comm.get("dealer", {"bytes": 0, "rounds": 0})
    requests = dealer["rounds"] / REQUEST_ROUNDS
    return {link.name: online[link.name] + dealer_added_s(dealer["bytes"], requests, link) for link in links}


def session_online(comm: dict) -> dict:
    """The computing parties' online counts from a session's transport counts
    (``{role: {"bytes", "rounds", "online": {...}}}``, as the benches and ``infer`` record them)."""
    return {p: comm[p]["online"] for p in COMPUTING}


def session_link_times(comm: dict, links=LINKS) -> dict[str, float]:
    """:func:`link_times_with_dealer` from a session's transport counts (see :func:`session_online`)."""
    return link_times_with_dealer({**session_online(comm), "dealer": comm["dealer"]}, links)


def all_wires_bytes(comm: dict) -> int:
    """Bytes on every wire of a session: what owner, server (online + dealer requests) and dealer sent."""
    return sum(comm[p]["bytes"] for p in ROLES)
