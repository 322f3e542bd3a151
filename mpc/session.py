"""Party roles and the per-process CrypTen session.

Three roles, three OS processes:

* ``owner``  (rank 0) — holds inputs, receives outputs;
* ``server`` (rank 1) — holds model weights;
* ``dealer`` (rank 2) — the trusted third party (:mod:`mpc.dealer`, in place of
  CrypTen's TTP server): it produces Beaver triples and the other correlated
  randomness from keystreams each party keys (:mod:`mpc.prg`), and sees neither
  inputs nor weights (only tensor shapes and request names).

CrypTen's default provider, "TFP", lets rank 0 generate every triple; rank 0 is the
data owner, who would then know the masks and could unmask the server's weights.
:func:`start` therefore forces the TTP provider and refuses any other, and
:func:`assert_secure_provider` re-checks it before secure work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mpc import crypten_seam, dealer, profiling
from mpc.errors import InsecureProviderError
from mpc.roles import COMPUTING, RANK

COMPUTING_PARTIES = 2  # CrypTen's world size; the dealer is rank WORLD_SIZE
PROVIDER = "TTP"


@dataclass(frozen=True)
class SessionSpec:
    """How a party finds its peers.

    ``rendezvous`` is a torch.distributed init method (``tcp://host:port`` or
    ``file:///path``); ``timeout_s`` bounds every wait on a peer, so a peer that
    hangs turns into an error instead of a hang.
    """

    rendezvous: str
    timeout_s: float = 120.0
    precision_bits: int = 16


def assert_secure_provider() -> None:
    """Fail unless triples come from the separate dealer process."""
    import crypten

    provider = crypten.cfg.mpc.provider
    if provider != PROVIDER:
        raise InsecureProviderError(
            f"triple provider {provider!r} is not allowed: with it a computing party "
            "(rank 0, the data owner) generates the Beaver triples and could unmask the "
            "server's weights; secptune uses the separate dealer ('TTP') only"
        )


def _configure(spec: SessionSpec, role: str) -> None:
    """This process's place in the session and CrypTen, with secptune's patches installed."""
    os.environ.update(
        RANK=str(RANK[role]),
        WORLD_SIZE=str(COMPUTING_PARTIES),
        RENDEZVOUS=spec.rendezvous,
        DISTRIBUTED_BACKEND="gloo",
    )
    crypten_seam.configure(provider=PROVIDER, precision_bits=spec.precision_bits)
    crypten_seam.install()
    dealer.reset_client()  # this session's requests chain from zero, as the dealer's do


def start(spec: SessionSpec, role: str) -> None:
    """Join the session as ``owner`` or ``server`` (blocks until all three have joined)."""
    if role not in COMPUTING:
        raise ValueError(f"start() is for computing parties, not {role!r}; use run_dealer()")
    _configure(spec, role)
    import crypten

    with crypten_seam.peer_timeout(spec.timeout_s):
        crypten.init()
    assert_secure_provider()


def run_dealer(spec: SessionSpec) -> dict | None:
    """Serve correlated randomness until the owner says the session is over.  Returns the
    dealer's profile when profiling is on (:mod:`mpc.profiling`; benchmarks), else None."""
    _configure(spec, "dealer")
    with crypten_seam.peer_timeout(spec.timeout_s):
        server = dealer.Dealer()
    out: dict = {}
    with profiling.profiled(out):
        server.serve()
    if not out:
        return None
    return {**out["profile"], "requests": server.request_times.as_dict()}


def stop() -> None:
    """Leave the session; the owner's stop also tells the dealer to exit."""
    import crypten

    if crypten.is_initialized():
        crypten.uninit()
