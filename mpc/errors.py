"""Every error the secure-computation layer raises on purpose, in one hierarchy.

A caller (the CLI, a test, a product session) can catch :class:`MPCError` for "the
secure computation could not go on" and a subclass for the reason; each message is
written for the user.  Errors that used to be ``RuntimeError`` still are one.
"""

from __future__ import annotations


class MPCError(Exception):
    """The secure computation could not go on; the message says why and what to do."""


# -- the parties' network (mpc.net, mpc.tls, mpc.channels, mpc.transport) ---------
class TransportError(MPCError):
    """A problem with the parties' network."""


class NetworkConfigError(TransportError):
    """The network options cannot work (bad --peers, missing keys, no TLS off loopback)."""


class StartupError(TransportError):
    """The parties could not meet (unreachable, refused, wrong role, version mismatch)."""


class PeerLostError(TransportError):
    """A peer went away during the run (its process ended or its connection broke)."""


class PeerTimeoutError(TransportError):
    """A peer sent nothing for longer than the peer timeout (it hangs, or the network is down)."""


# -- correlated randomness: the dealer and the parties' streams -------------------
class ProviderError(MPCError, RuntimeError):
    """Correlated randomness could not be provided safely."""


class DealerRefusedError(ProviderError):
    """The dealer refused a request (not allowed, too large, or not agreed by the server)."""


class InsecureRandomnessError(ProviderError):
    """A mask was about to be drawn from a non-cryptographic generator."""


class InsecureProviderError(ProviderError):
    """A triple provider that lets a data-holding party make triples was selected."""


# -- the CrypTen integration and the local launcher --------------------------------
class CrypTenVersionError(MPCError, RuntimeError):
    """The installed CrypTen is not the version the patch table was written for."""


class PartyFailedError(MPCError, RuntimeError):
    """A party process failed or died (mpc.launcher)."""
