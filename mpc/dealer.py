"""The dealer process and its extra kinds of correlated randomness.

CrypTen's ``TTPServer`` answers requests for Beaver triples and a few other
tuples.  secptune needs more (e.g. shares of sin t / cos t for a one-round
cosine).  Modules register a *dealer function* with :func:`dealer_function`; the
dealer answers it like CrypTen's own requests: it knows the random values both
parties derive from their seeded generators, computes the correlated value, and
sends the data owner's share (the server's share comes from its generator).  The
dealer sees request names and shapes only — never a share of data or weights.

Extension modules are listed in ``EXTENSIONS`` so the dealer process, which runs
no model code, imports and registers them before it serves.
"""

from __future__ import annotations

import importlib
from typing import Callable

EXTENSIONS = ("mpc.trig", "mpc.fixed_weights", "mpc.opened", "mpc.truncation")

_FUNCTIONS: dict[str, Callable] = {}
_RELEASE_HOOKS: list[Callable] = []  # dealer side: fn(handles) drops held values
_PENDING_RELEASE: list[int] = []  # party side: handles to release with the next request


def dealer_function(name: str):
    """Register ``fn(server, *args)`` as dealer request ``name`` (server: the dealer object).

    ``fn`` returns the data owner's share; it may use ``server.prss(size)`` (the
    plaintext sum of both parties' next generator draws) and
    ``server.prss_server(size)`` (the server's next draw alone).
    """

    def register(fn):
        _FUNCTIONS[name] = fn
        return fn

    return register


def release_hook(fn: Callable) -> Callable:
    """Register ``fn(handles)`` (dealer side): forget the values held under these handles."""
    _RELEASE_HOOKS.append(fn)
    return fn


def release_later(handle: int) -> None:
    """Party side: the dealer may forget what it holds under ``handle``; the notice
    travels with the next request (no extra round)."""
    _PENDING_RELEASE.append(handle)


def request(name: str, size, *args, device=None):
    """Client side: both parties call this in the same order; returns this party's share (int64).

    The owner's share arrives from the dealer; the server draws its own from the
    generator it shares with the dealer, so only the owner talks to the dealer.
    """
    import crypten.communicator as comm
    import torch
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.provider.ttp_provider import TTPClient

    client = TTPClient.get()
    release = list(_PENDING_RELEASE)
    _PENDING_RELEASE.clear()
    if comm.get().get_rank() == 0:
        return client.ttp_request(name, device, tuple(size), *args, **({"release": release} if release else {}))
    return generate_random_ring_element(torch.Size(size), generator=client.get_generator(device=device), device=device)


def party_draw(size, device=None):
    """Both parties' next draw from their dealer-shared generators (a share of a PRSS value)."""
    import torch
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.provider.ttp_provider import TTPClient

    generator = TTPClient.get().get_generator(device=device)
    return generate_random_ring_element(torch.Size(size), generator=generator, device=device)


def make_server_class():
    """A TTPServer subclass that also answers the registered dealer functions."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    for module in EXTENSIONS:
        importlib.import_module(module)

    class DealerServer(TTPServer):
        def prss(self, size):
            return self._get_additive_PRSS(size)

        def prss_server(self, size):
            return self._get_additive_PRSS(size, remove_rank=True)

        def __getattr__(self, name):
            fn = _FUNCTIONS.get(name)
            if fn is None:
                raise AttributeError(name)

            def serve(*args, release=(), **kwargs):
                for hook in _RELEASE_HOOKS:
                    hook(release)
                return fn(self, *args, **kwargs)

            return serve

    return DealerServer
