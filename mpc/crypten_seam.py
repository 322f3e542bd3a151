"""The one place secptune writes into CrypTen: every patch, declared, version-guarded, installed here.

secptune runs on one CrypTen release (:data:`CRYPTEN_VERSION`) and changes it at
run time: an import stub, the randomness, the tuple provider, the int64 matrix
products, the settings' reads, the traffic accounting, the transport, two settings and the peer
timeout.  The replacements live in the protocol modules that own them
(:mod:`mpc.prg`, :mod:`mpc.dealer`, :mod:`mpc.ring`, :mod:`mpc.accounting`,
:mod:`mpc.transport`); this module alone puts them into CrypTen, from the tables
:data:`PATCHES` and :data:`TRANSPORT_PATCHES` (where, what, why).  A CrypTen
upgrade therefore fails in one spot: :func:`install` refuses any other CrypTen
version (and a CrypTen missing a patch point), and ``tests/test_crypten_seam.py``
checks that every patched attribute still exists and that no other file writes
into CrypTen.  ``scripts/crypten_tests.sh`` runs CrypTen's own tests with the
seam installed.

:data:`PARTY_STATE` names CrypTen's per-process state of a party (communicator, dealer client,
streams): the in-process simulation of the tests (``tests/sim.py``) keeps it per party and
swaps it with :func:`set_party_state`; :func:`snapshot` / :func:`restore` let it leave CrypTen
as it found it.

Every party process calls :func:`install` (parties are spawned fresh);
``import mpc`` registers the import stub (:func:`install_import_stub`) before
anything imports CrypTen.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mpc import accounting, config_cache, dealer, prg, ring
from mpc.errors import CrypTenVersionError

CRYPTEN_VERSION = "0.4.1"

_COMMUNICATOR = "crypten.communicator.distributed_communicator"
_TTP = "crypten.mpc.provider.ttp_provider"
_TTP_CLIENT = f"{_TTP}:TTPClient._TTPClient__TTPClient"  # the singleton's (name-mangled) class


@dataclass(frozen=True)
class Patch:
    """One attribute of CrypTen that secptune replaces.

    ``owner``: the module, or ``module:Class`` (dotted for a nested class);
    ``replace``: CrypTen's original -> what CrypTen gets instead (None: a value
    known only at run time, installed by a function of this module).
    """

    owner: str
    attribute: str
    replace: Callable[[Any], Any] | None
    why: str

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.attribute}"


def _value(value) -> Callable[[Any], Any]:
    """A replacement that does not depend on CrypTen's original."""
    return lambda _original: value


_SAMPLERS = "CrypTen's ring-element sampler drew masks from a Mersenne Twister (mpc.prg)"
_RING = "int64 matmuls through ring_matmul (mpc.ring)"
_TUPLES = "tuples from secptune's allow-listed dealer, not CrypTen's TTPServer (mpc.dealer)"

PATCHES: tuple[Patch, ...] = (
    # randomness: every mask from AES-CTR streams keyed by os.urandom
    Patch("crypten", "_setup_prng", _value(prg.setup_streams), "pairwise/local/global streams from fresh keys"),
    Patch(_TTP_CLIENT, "_setup_generators", _value(prg.send_dealer_key),
          "each party keys its dealer stream itself instead of receiving a seed"),
    *(Patch(module, "generate_random_ring_element", _value(prg.ring_element), _SAMPLERS)
      for module in ("crypten.common.rng", _TTP, "crypten.mpc.provider.tfp_provider",
                     "crypten.mpc.primitives.arithmetic")),
    *(Patch(module, "generate_kbit_random_tensor", _value(prg.kbit_tensor), _SAMPLERS)
      for module in ("crypten.common.rng", _TTP, "crypten.mpc.provider.tfp_provider",
                     "crypten.mpc.primitives.binary")),
    # the dealer: CrypTen's five tuple kinds and no raw request path
    *(Patch(f"{_TTP}:TrustedThirdParty", kind, _value(getattr(dealer.TupleProvider, kind)), _TUPLES)
      for kind in ("generate_additive_triple", "square", "generate_binary_triple", "wrap_rng", "B2A_rng")),
    Patch(_TTP_CLIENT, "ttp_request", _value(dealer.refuse_raw_request),
          "CrypTen's TTP request path runs any method name it is sent"),
    # exact int64 products: the module-global ``torch`` of the three modules that multiply shares
    *(Patch(module, "torch", ring.torch_proxy, _RING)
      for module in ("crypten.mpc.primitives.beaver", "crypten.mpc.primitives.arithmetic",
                     "crypten.mpc.provider.tfp_provider")),
    # settings: CrypTen reads them inside every op, through omegaconf
    Patch("crypten.config.config:CrypTenConfig", "__getattribute__", config_cache.cached_getattribute,
          "settings read from plain-dict views, rebuilt when CrypTen replaces its config (mpc.config_cache)"),
    # traffic accounting and the receive-path audit
    *(Patch(f"{_COMMUNICATOR}:DistributedCommunicator", method,
            functools.partial(accounting.counted, account=account),
            "count bytes and rounds per channel, audit what is received (mpc.accounting)")
      for method, account in accounting.COMMUNICATOR_ACCOUNTS.items()),
)

# Set at run time by :func:`use_transport` (its value is this process's transport).
TRANSPORT_PATCHES: tuple[Patch, ...] = tuple(
    Patch(module, "dist", None, "TLS channels between the parties instead of gloo (mpc.transport)")
    for module in (_COMMUNICATOR, _TTP)
)

# CrypTen's per-process state of a party: what the in-process simulation (tests/sim.py), which
# plays owner, server and dealer in one process, keeps for each party and swaps in when that
# party runs (:func:`party_state`, :func:`set_party_state`).  Nothing else changes these.
PARTY_STATE: tuple[Patch, ...] = (
    Patch(f"{_COMMUNICATOR}:DistributedCommunicator", "instance", None, "the party's communicator (rank, groups)"),
    Patch(f"{_TTP}:TTPClient", "_TTPClient__instance", None, "the party's dealer client and dealer stream"),
    Patch("crypten", "generators", None, "the party's pairwise, local and global streams"),
)

IMPORT_STUB = "crypten.nn.onnx_converter"

_APPLIED: dict[str, tuple[Any, Any]] = {}  # patch name -> (CrypTen's original, the replacement)


# ---- the import stub ----------------------------------------------------------------

def _onnx_unsupported(*_args, **_kwargs):
    raise NotImplementedError(
        "CrypTen's ONNX converter is disabled in secptune (it does not work on this "
        "torch); build secure models with secptune's own transformer instead."
    )


def install_import_stub() -> None:
    """Let CrypTen import on current torch (idempotent; before CrypTen is imported).

    CrypTen 0.4.1 imports its ONNX converter at package import time, and that
    converter needs the ``onnx`` package and torch internals gone since torch 2.1.
    secptune never converts ONNX graphs, so a stand-in module takes its place.
    """
    if IMPORT_STUB in sys.modules:
        return
    stub = types.ModuleType(IMPORT_STUB)
    stub.__doc__ = "secptune stand-in: ONNX conversion is not available."
    stub.from_onnx = stub.from_pytorch = stub.from_tensorflow = _onnx_unsupported
    stub.TF_AND_TF2ONNX = False
    sys.modules[IMPORT_STUB] = stub


# ---- the version guard and the table ---------------------------------------------------

def installed_version() -> str:
    """The version of the CrypTen this process imports."""
    return importlib.import_module("crypten").__version__


def check_version() -> None:
    """Raise :class:`CrypTenVersionError` unless CrypTen is the pinned version."""
    found = installed_version()
    if found != CRYPTEN_VERSION:
        raise CrypTenVersionError(
            f"secptune needs CrypTen {CRYPTEN_VERSION} but this environment has CrypTen {found}. "
            f"Install the pinned version (pip install --no-deps crypten=={CRYPTEN_VERSION}, as "
            "scripts/setup.sh does); to move to another CrypTen, port the patch table in "
            "mpc/crypten_seam.py and run tests/test_crypten_seam.py."
        )


def resolve(owner: str):
    """The CrypTen module or class a patch's ``owner`` names."""
    module, _, path = owner.partition(":")
    target = importlib.import_module(module)
    for part in filter(None, path.split(".")):
        target = getattr(target, part)
    return target


def missing_points(patches=PATCHES + TRANSPORT_PATCHES + PARTY_STATE) -> list[str]:
    """The patch points the installed CrypTen lacks (empty for the pinned release)."""
    missing = []
    for patch in patches:
        try:
            target = resolve(patch.owner)
        except (ImportError, AttributeError):
            missing.append(patch.name)
            continue
        if not hasattr(target, patch.attribute):
            missing.append(patch.name)
    return missing


def _apply(patch: Patch, make: Callable[[Any], Any], *, again: bool = False) -> None:
    """Put ``make(original)`` at the patch point; a point already patched is left alone
    unless ``again`` (a run-time value replaces the previous one)."""
    target = resolve(patch.owner)
    current = getattr(target, patch.attribute)
    applied = _APPLIED.get(patch.name)
    if applied is not None and current is applied[1]:
        if not again:
            return
        original = applied[0]
    else:
        original = current
    replacement = make(original)
    setattr(target, patch.attribute, replacement)
    _APPLIED[patch.name] = (original, replacement)


def install() -> None:
    """Install every patch of :data:`PATCHES` in this process (idempotent)."""
    install_import_stub()
    check_version()
    missing = missing_points()
    if missing:  # a modified CrypTen: patch nothing rather than half of it
        raise CrypTenVersionError(
            f"this CrypTen {installed_version()} lacks what secptune patches: {', '.join(missing)}; "
            f"reinstall crypten=={CRYPTEN_VERSION} or port the patch table in mpc/crypten_seam.py"
        )
    for patch in PATCHES:
        _apply(patch, patch.replace)


def use_transport(dist) -> None:
    """Make CrypTen's communicator and TTP provider send through ``dist`` (an
    :class:`mpc.transport.Dist`) instead of ``torch.distributed``."""
    check_version()
    for patch in TRANSPORT_PATCHES:
        _apply(patch, _value(dist), again=True)


def installed() -> bool:
    """True when every patch of :data:`PATCHES` is in place in this process."""
    return all(
        patch.name in _APPLIED and getattr(resolve(patch.owner), patch.attribute) is _APPLIED[patch.name][1]
        for patch in PATCHES
    )


def applied() -> dict[str, tuple[Any, Any]]:
    """Patch name -> (CrypTen's original, the replacement), for what this process installed."""
    return dict(_APPLIED)


def uninstall() -> None:
    """Put CrypTen's originals back (tests that install in the test process itself)."""
    for name, (original, _replacement) in reversed(list(_APPLIED.items())):
        owner, _, attribute = name.rpartition(".")
        setattr(resolve(owner), attribute, original)
    _APPLIED.clear()


# ---- settings --------------------------------------------------------------------------

def configure(provider: str, precision_bits: int) -> None:
    """CrypTen's tuple provider and fixed-point precision for this process."""
    crypten = importlib.import_module("crypten")
    crypten.cfg.mpc.provider = provider
    crypten.cfg.encoder.precision_bits = precision_bits


@contextlib.contextmanager
def peer_timeout(timeout_s: float):
    """Inside, ``torch.distributed.init_process_group`` waits at most ``timeout_s`` for the
    peers (CrypTen passes no timeout: gloo's default is 30 minutes)."""
    original = torch.distributed.init_process_group

    @functools.wraps(original)
    def init(*args, **kwargs):
        kwargs.setdefault("timeout", datetime.timedelta(seconds=timeout_s))
        return original(*args, **kwargs)

    torch.distributed.init_process_group = init
    try:
        yield
    finally:
        torch.distributed.init_process_group = original


# ---- one process, three parties (tests/sim.py) -------------------------------------------

def fresh_party_state() -> dict[str, Any]:
    """:data:`PARTY_STATE` as in a freshly spawned process (no communicator, client or streams)."""
    communicator, client, generators = PARTY_STATE
    return {communicator.name: None, client.name: None,
            generators.name: {"prev": {}, "next": {}, "local": {}, "global": {}}}


def party_state() -> dict[str, Any]:
    """The values of :data:`PARTY_STATE` in CrypTen now (the running party's)."""
    return {patch.name: getattr(resolve(patch.owner), patch.attribute) for patch in PARTY_STATE}


def set_party_state(state: dict[str, Any]) -> None:
    """Put a party's :data:`PARTY_STATE` (from :func:`party_state` or :func:`fresh_party_state`) in place."""
    for patch in PARTY_STATE:
        setattr(resolve(patch.owner), patch.attribute, state[patch.name])


@dataclass(frozen=True)
class Snapshot:
    """Every point this module writes, as it was (:func:`snapshot`)."""

    applied: dict[str, tuple[Any, Any]]
    values: dict[str, Any]


_ALL_POINTS = PATCHES + TRANSPORT_PATCHES + PARTY_STATE


def snapshot() -> Snapshot:
    """What this process's CrypTen holds at every patch point and :data:`PARTY_STATE` point
    now, so a test that installs the seam in its own process can leave CrypTen as it found it."""
    return Snapshot(dict(_APPLIED), {p.name: getattr(resolve(p.owner), p.attribute) for p in _ALL_POINTS})


def restore(saved: Snapshot) -> None:
    """Put every point back as :func:`snapshot` found it (and forget later installs)."""
    for patch in _ALL_POINTS:
        setattr(resolve(patch.owner), patch.attribute, saved.values[patch.name])
    _APPLIED.clear()
    _APPLIED.update(saved.applied)
