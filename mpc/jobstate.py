"""What a secure job leaves behind in a party process, and how to clear it.

A party spawned for one run (:func:`mpc.launcher.run_local`) exits afterwards, so
none of this matters there.  A persistent party (:class:`mpc.launcher.LocalCluster`)
runs many jobs in one process; before each it must be in the state of a freshly
spawned one, or a job would see the last one's masks, dealer handles, traffic
counters, CrypTen config or session.  :func:`reset` restores that state;
:func:`leftovers` says what is left, so tests can check the reset.

Modules above ``mpc`` with per-process state of their own register a reset with
:func:`on_reset` (imports point one way: ``mpc`` never imports them).
"""

from __future__ import annotations

import copy
import itertools
from typing import Callable

import torch

from mpc import accounting, dealer, fixed_weights, opened, prg, reveal, ring, transport

_RESETS: list[Callable[[], None]] = []
_BASELINE: dict = {}


def on_reset(fn: Callable[[], None]) -> Callable[[], None]:
    """Register ``fn()`` to run in every reset (module-level state outside ``mpc``)."""
    _RESETS.append(fn)
    return fn


def remember_baseline() -> None:
    """Record this fresh process's CrypTen config and torch settings (call once, first)."""
    import crypten

    _BASELINE.update(
        cfg=copy.deepcopy(crypten.cfg.config),
        dtype=torch.get_default_dtype(),
        threads=torch.get_num_threads(),
    )


def reset() -> None:
    """Leave no trace of the last job: session, CrypTen config and randomness, masks, logs."""
    import crypten
    from crypten.mpc.provider import ttp_provider


    if crypten.is_initialized():
        crypten.uninit()
    transport.shutdown(graceful=True)
    ttp_provider.TTPClient.uninit()  # crypten.uninit keeps it, with its dealer stream
    crypten.cfg.set_config(copy.deepcopy(_BASELINE["cfg"]))
    torch.seed()  # a fresh process's torch seed is random too: none left by a job's manual_seed
    torch.set_default_dtype(_BASELINE["dtype"])
    torch.set_num_threads(_BASELINE["threads"])
    accounting.log().__init__()  # counters, audit, canaries, sections: as at import
    accounting._SORTED_CANARIES.clear()
    reveal._REVEALS.clear()
    ring.calls.clear()
    prg._WARNED = False
    dealer._CLIENT_CHAIN.__init__()
    dealer._PENDING_RELEASE.clear()
    dealer._PENDING_SENDS.clear()
    for module in (fixed_weights, opened):
        module._DEALER_MASKS.clear()
        module._HANDLES = itertools.count()  # both parties number their handles from 0 again
    for fn in _RESETS:
        fn()


def leftovers() -> dict:
    """What the last job left in this process (all zero/False after :func:`reset`)."""
    import crypten
    from crypten.mpc.provider import ttp_provider


    log = accounting.log()
    installed = transport.installed()
    return {
        "crypten_initialized": crypten.is_initialized(),
        "transport_open": installed is not None and installed.transport is not None,
        "ttp_client": ttp_provider.TTPClient._TTPClient__instance is not None,
        "bytes": log.online.bytes + log.dealer.bytes,
        "rounds": log.online.rounds + log.dealer.rounds,
        "received_elements": log.received_elements,
        "canaries": log.canaries is not None,
        "reveals": len(reveal._REVEALS),
        "dealer_requests": dealer._CLIENT_CHAIN.count,
        "dealer_masks": len(fixed_weights._DEALER_MASKS) + len(opened._DEALER_MASKS),
        "pending_release": len(dealer._PENDING_RELEASE),
    }
