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

import datetime
import functools
import os
from dataclasses import dataclass

import mpc  # noqa: F401  (installs the CrypTen import shim)

ROLES = ("owner", "server", "dealer")
RANK = {role: rank for rank, role in enumerate(ROLES)}
COMPUTING_PARTIES = 2  # CrypTen's world size; the dealer is rank WORLD_SIZE
PROVIDER = "TTP"


class InsecureProviderError(RuntimeError):
    """Raised when a triple provider that lets a data-holding party make triples is selected."""


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
    os.environ.update(
        RANK=str(RANK[role]),
        WORLD_SIZE=str(COMPUTING_PARTIES),
        RENDEZVOUS=spec.rendezvous,
        DISTRIBUTED_BACKEND="gloo",
    )
    import crypten

    crypten.cfg.mpc.provider = PROVIDER
    crypten.cfg.encoder.precision_bits = spec.precision_bits


def _with_timeout(init_process_group, timeout_s: float):
    @functools.wraps(init_process_group)
    def init(*args, **kwargs):
        kwargs.setdefault("timeout", datetime.timedelta(seconds=timeout_s))
        return init_process_group(*args, **kwargs)

    return init


def _install_hooks() -> None:
    from mpc import accounting, dealer, prg, ring

    accounting.install()
    ring.install_into_crypten()
    prg.install_into_crypten()  # every mask from AES-CTR streams keyed by os.urandom
    dealer.install_into_crypten()  # triples from secptune's allow-listed dealer


def start(spec: SessionSpec, role: str) -> None:
    """Join the session as ``owner`` or ``server`` (blocks until all three have joined)."""
    if role not in ("owner", "server"):
        raise ValueError(f"start() is for computing parties, not {role!r}; use run_dealer()")
    _configure(spec, role)
    _install_hooks()
    import crypten
    import torch.distributed as dist

    original = dist.init_process_group
    dist.init_process_group = _with_timeout(original, spec.timeout_s)
    try:
        crypten.init()
    finally:
        dist.init_process_group = original
    assert_secure_provider()


def run_dealer(spec: SessionSpec) -> None:
    """Serve correlated randomness until the owner says the session is over."""
    _configure(spec, "dealer")
    _install_hooks()
    import crypten  # noqa: F401
    import torch.distributed as dist

    from mpc.dealer import Dealer

    original = dist.init_process_group
    dist.init_process_group = _with_timeout(original, spec.timeout_s)
    try:
        dealer = Dealer()
    finally:
        dist.init_process_group = original
    dealer.serve()


def stop() -> None:
    """Leave the session; the owner's stop also tells the dealer to exit."""
    import crypten

    if crypten.is_initialized():
        crypten.uninit()
