"""Property tests of the protocol algebra, on the in-process simulation (tests/sim.py).

For random shapes and values (hypothesis) the revealed secure result equals the
plaintext formula on the *encoded* inputs within a stated fixed-point tolerance:

* ``U = 2^-16``: one unit of CrypTen's 16-bit fixed point.  CrypTen encodes x as
  trunc(x·2^16); an exact ring product at scale 2^32 is brought back to 2^16 by each party
  dividing its share (rounding toward zero), so the revealed value is within 2 U of the
  product of the encodings (each share's division is off by less than one unit);
* that local division wraps with probability ~|product|·2^-32 per element: values stay
  within ±8 (products ≤ 64, under 2·10^-8 per element), so no example fails by chance.

Every property has a positive control: the same check on a run in which the dealer drops its
correction for one request kind (the owner gets the share of 0 instead of A·B, T's harmonics,
...) fails.  That is only possible because the dealer runs in this process.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import sys
import threading
import types

import crypten.communicator as comm
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sim
from op_jobs import run as run_op
from mpc import approx, crypten_seam, dealer, fixed_weights, fourier, trig
from mpc.launcher import PartyJob
from mpc.opened import Opened
from mpc.reveal import reveal_to
from mpc.tensorops import matmul, open_shares
from mpc.truncation import BOUND_BITS, truncate_shares

import crypten  # noqa: E402  (after mpc: its import stub first)

U = 2.0**-16
PRODUCT_TOL = 2 * U
VALUE_BOUND = 8.0
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def encoded(x: torch.Tensor) -> torch.Tensor:
    """x as CrypTen encodes it: truncated toward zero to 16 fractional bits."""
    return torch.trunc(x * 2**16) / 2**16


def values(shape, bound: float = VALUE_BOUND):
    return arrays(np.float64, shape, elements=st.floats(-bound, bound, allow_nan=False, allow_subnormal=False))


dims = st.integers(1, 6)


# ---- the parties' job: share the owner's (and the server's) inputs, run, reveal to the owner ----

def _share(rank: int, value, shape, src: int):
    mine = value if rank == src else torch.zeros(shape, dtype=torch.float64)
    return crypten.cryptensor(torch.as_tensor(mine, dtype=torch.float64), src=src)


def secure_job(op: str, owner_inputs, server_inputs, shapes):
    """``OPS[op]`` on the owner's and the server's secret inputs; the owner gets the result."""
    rank = comm.get().get_rank()
    own, serve = shapes
    xs = [_share(rank, owner_inputs[i] if rank == 0 else None, s, 0) for i, s in enumerate(own)]
    ws = [_share(rank, server_inputs[i] if rank == 1 else None, s, 1) for i, s in enumerate(serve)]
    return reveal_to(OPS[op](*xs, *ws), 0)


def secure(op: str, owner_inputs=(), server_inputs=()):
    """Run ``op`` in the simulation; the owner's revealed result (float64)."""
    owner_inputs = [torch.as_tensor(v, dtype=torch.float64) for v in owner_inputs]
    server_inputs = [torch.as_tensor(v, dtype=torch.float64) for v in server_inputs]
    shapes = ([tuple(v.shape) for v in owner_inputs], [tuple(v.shape) for v in server_inputs])
    results = sim.run(PartyJob(secure_job, (op, owner_inputs, [None] * len(server_inputs), shapes)),
                      PartyJob(secure_job, (op, [None] * len(owner_inputs), server_inputs, shapes)), timeout_s=60)
    return results["owner"].value


def _mul(x, y):
    return Opened(x).mul(y, last=True)


def _square(x):
    return Opened(x).square(last=True)


def _opened_matmul(x, w):
    return Opened(x).matmul(w, last=True)


def _fixed_linear(x1, x2, w):
    """Two inputs through one fixed-mask weight (the mask B serves both products), and x1
    once more after it was opened for another product (the held-mask path)."""
    fixed = fixed_weights.prepare({"l.w": w})["l.w"]
    held = Opened(x1)
    held.square()  # another product with x1 first: its opening is reused below
    out = [matmul(x1, fixed), matmul(x2, fixed), fixed.group.product(held)]
    held.release()
    return crypten.cat([o.reshape(-1) for o in out])


def _sincos(u):
    s, c = trig.sincos_turns(u)
    return crypten.stack([s, c])


def _silu(x):
    return fourier.evaluate(x, fourier.activation_series("silu", 16.0))


def _pow2(v):
    s, s2 = approx.power_of_two_scale(v, POW2_RANGE[0], POW2_RANGE[1])
    return crypten.cat([s, s2], dim=-1)


POW2_RANGE = (1e-3, 64.0)
OPS = {"mul": _mul, "square": _square, "opened_matmul": _opened_matmul, "fixed_linear": _fixed_linear,
       "sincos": _sincos, "silu": _silu, "pow2": _pow2}


# ---- the positive controls' tool: a dealer that drops its correction --------------------------

@contextlib.contextmanager
def dealer_drops(name: str):
    """The dealer's function ``name`` hands the owner the share of 0 (minus the server's draw)
    instead of the owner's share of its value; stream positions stay in step."""
    original = dealer._FUNCTIONS[name]

    class Spy:
        def __init__(self, server):
            self.server, self.server_draws = server, []

        def __getattr__(self, attr):
            return getattr(self.server, attr)

        def prss_server(self, size):
            draw = self.server.prss_server(size)
            self.server_draws.append(draw)
            return draw

    def dropped(server, size, *args):
        spy = Spy(server)
        original(spy, size, *args)
        return -spy.server_draws[-1]

    dealer._FUNCTIONS[name] = dropped
    try:
        yield
    finally:
        dealer._FUNCTIONS[name] = original


def close(got: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    return got.shape == want.shape and bool(((got - want).abs() < tol).all())


# ---- Opened: mul, square, matmul with the held mask ----------------------------------------------

@st.composite
def mul_inputs(draw):
    rows, cols = draw(dims), draw(dims)
    y_shape = draw(st.sampled_from([(rows, cols), (rows, 1), (cols,)]))
    return draw(values((rows, cols))), draw(values(y_shape))


def check_mul(x, y, got) -> bool:
    return close(got, encoded(torch.as_tensor(x)) * encoded(torch.as_tensor(y)), PRODUCT_TOL)


@SETTINGS
@given(mul_inputs())
def test_opened_mul_is_the_product(xy):
    x, y = xy
    assert check_mul(x, y, secure("mul", [x, y]))


def check_square(x, got) -> bool:
    return close(got, encoded(torch.as_tensor(x)).square(), PRODUCT_TOL)


@SETTINGS
@given(dims.flatmap(lambda r: dims.flatmap(lambda c: values((r, c)))))
def test_opened_square_is_the_square(x):
    assert check_square(x, secure("square", [x]))


@st.composite
def matmul_inputs(draw):
    m, k, n = draw(dims), draw(dims), draw(dims)
    batch = draw(st.sampled_from([(), (2,)]))
    return draw(values((*batch, m, k))), draw(values((k, n)))


def check_matmul(x, w, got) -> bool:
    # exact ring sums of k products, truncated once: the same 2-unit bound
    return close(got, encoded(torch.as_tensor(x)) @ encoded(torch.as_tensor(w)), PRODUCT_TOL)


@SETTINGS
@given(matmul_inputs())
def test_opened_matmul_is_the_matrix_product(xw):
    x, w = xw
    assert check_matmul(x, w, secure("opened_matmul", [x, w]))


def test_controls_opened_products_fail_without_the_dealers_correction():
    torch.manual_seed(0)
    x, y, w = (torch.rand(4, 5, dtype=torch.float64) * 4 + 1 for _ in range(3))
    assert check_mul(x, y, secure("mul", [x, y]))  # the same inputs pass with an honest dealer
    with dealer_drops("held_product"):
        assert not check_mul(x, y, secure("mul", [x, y]))
    with dealer_drops("held_square"):
        assert not check_square(x, secure("square", [x]))
    with dealer_drops("held_matmul"):
        assert not check_matmul(x, w.T, secure("opened_matmul", [x, w.T]))


# ---- fixed-weight linear (mpc.fixed_weights): W from the server, one mask for many X ----------

@st.composite
def linear_inputs(draw):
    k, n, rows1, rows2 = draw(dims), draw(dims), draw(dims), draw(dims)
    return draw(values((rows1, k))), draw(values((rows2, k))), draw(values((k, n)))


def check_linear(x1, x2, w, got) -> bool:
    x1, x2, w = (encoded(torch.as_tensor(t)) for t in (x1, x2, w))
    want = torch.cat([(x1 @ w).reshape(-1), (x2 @ w).reshape(-1), (x1 @ w).reshape(-1)])
    return close(got, want, PRODUCT_TOL)


@SETTINGS
@given(linear_inputs())
def test_fixed_weight_linear_is_the_matrix_product(inputs):
    x1, x2, w = inputs
    assert check_linear(x1, x2, w, secure("fixed_linear", [x1, x2], [w]))


def test_controls_fixed_weight_linear_fails_without_the_dealers_correction():
    torch.manual_seed(1)
    x1, x2, w = (torch.rand(3, 4, dtype=torch.float64) + 1, torch.rand(2, 4, dtype=torch.float64) + 1,
                 torch.rand(4, 3, dtype=torch.float64) + 1)
    assert check_linear(x1, x2, w, secure("fixed_linear", [x1, x2], [w]))
    for kind in ("fixed_product", "held_fixed_product"):
        with dealer_drops(kind):
            assert not check_linear(x1, x2, w, secure("fixed_linear", [x1, x2], [w])), kind


# ---- exact truncation (mpc.truncation) on ring values |Z| < 2^62 ------------------------------

def truncation_job(share: torch.Tensor, shifts: tuple[int, ...]):
    """This party's shares of ⌊Z/2^k⌋ (the test adds both parties' shares)."""
    return truncate_shares(share, shifts)


def secure_truncation(z: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    mask = torch.randint(-(2**63), 2**63 - 1, z.shape, dtype=torch.int64)  # the split of Z into shares
    results = sim.run(PartyJob(truncation_job, (z - mask, shifts)), PartyJob(truncation_job, (mask, shifts)))
    return results["owner"].value + results["server"].value  # Z_2^64: int64 wrap-around


@st.composite
def truncation_inputs(draw):
    shifts = tuple(draw(st.lists(st.integers(1, BOUND_BITS), min_size=1, max_size=3)))
    width = draw(dims)
    bound = 2**BOUND_BITS
    edges = st.sampled_from([-bound, bound - 1, 0, -1, 1])
    z = draw(st.lists(st.lists(st.integers(-bound, bound - 1) | edges, min_size=width, max_size=width),
                      min_size=len(shifts), max_size=len(shifts)))
    return torch.tensor(z, dtype=torch.int64), shifts


def check_truncation(z, shifts, got) -> bool:
    """⌊Z/2^k⌋ exactly, or one unit high (the borrow the protocol leaves out)."""
    k = torch.tensor(shifts, dtype=torch.int64).view(-1, 1)
    high_by = got - (z >> k)  # >> on int64 is the floor division by 2^k
    return bool(((high_by == 0) | (high_by == 1)).all())


@SETTINGS
@given(truncation_inputs())
def test_exact_truncation_is_the_floor(inputs):
    z, shifts = inputs
    assert check_truncation(z, shifts, secure_truncation(z, shifts))


def test_controls_truncation_fails_without_the_dealers_pair():
    z = torch.tensor([[2**61, -(2**61) + 12345, 77, -1]], dtype=torch.int64)
    assert check_truncation(z, (20,), secure_truncation(z, (20,)))
    with dealer_drops("truncation_pair"):
        assert not check_truncation(z, (20,), secure_truncation(z, (20,)))


# ---- the power-of-two range reduction of mpc.approx (comparisons: binary triples, B2A) -----------

def clear_of_thresholds(v: torch.Tensor) -> bool:
    """Away from 16^j, where the 2^-16 encoding of v may tip a comparison either way."""
    position = torch.log(v) / math.log(16)
    return bool(((position - position.round()).abs() > 1e-3).all())


def check_pow2(v, got) -> bool:
    s, s2 = approx.power_of_two_scale(encoded(v), *POW2_RANGE)  # the plaintext oracle
    want = torch.cat([s, s2], dim=-1)
    exponents = torch.log2(want)
    reduced = encoded(v) * s2
    return (bool((exponents == exponents.round()).all()) and bool(((reduced >= 1) & (reduced < 16)).all())
            and close(got, want, 2 * U))


@settings(SETTINGS, max_examples=10)
@given(st.lists(st.floats(math.log(POW2_RANGE[0]) + 0.01, math.log(POW2_RANGE[1])), min_size=1, max_size=6))
def test_power_of_two_scale_brings_v_into_one_to_sixteen(logs):
    v = torch.tensor(logs, dtype=torch.float64).exp().unsqueeze(-1)
    assume(clear_of_thresholds(encoded(v)))
    assert check_pow2(v, secure("pow2", [v]))


def test_controls_power_of_two_scale_fails_with_broken_comparisons():
    v = torch.tensor([[0.002], [0.5], [3.0], [50.0]], dtype=torch.float64)
    assert check_pow2(v, secure("pow2", [v]))
    with dealer_drops("B2A"):
        assert not check_pow2(v, secure("pow2", [v]))


# ---- one-round Fourier / trigonometric non-linearities (mpc.trig, mpc.fourier) -------------------

TRIG_TOL = 4e-4  # tests/test_trig.py: 16-bit angle resolution (2π/2^16) plus one truncation per product
SERIES_TOL = 2e-3  # tests/test_trig.py: the series' fixed-point error (Σ|a_n| units) on [-16, 16]


def check_sincos(u, got) -> bool:
    turns = 2 * math.pi * encoded(torch.as_tensor(u))
    return close(got, torch.stack([turns.sin(), turns.cos()]), TRIG_TOL)


@SETTINGS
@given(st.integers(1, 40).flatmap(lambda n: values((n,), bound=1000.0)))
def test_sincos_turns_is_sine_and_cosine(u):
    assert check_sincos(u, secure("sincos", [u]))


def check_silu(x, got) -> bool:
    return close(got, fourier.activation_series("silu", 16.0).series(encoded(torch.as_tensor(x))), SERIES_TOL)


@settings(SETTINGS, max_examples=10)
@given(st.integers(1, 40).flatmap(lambda n: values((n,), bound=16.0)))
def test_fourier_silu_is_its_series(x):
    assert check_silu(x, secure("silu", [x]))


def test_controls_trig_and_fourier_fail_without_the_dealers_harmonics():
    u = torch.linspace(-3, 3, 25, dtype=torch.float64)
    assert check_sincos(u, secure("sincos", [u])) and check_silu(u, secure("silu", [u]))
    with dealer_drops("harmonics"):
        assert not check_sincos(u, secure("sincos", [u]))
        assert not check_silu(u, secure("silu", [u]))


# ---- the server's view of an opening does not depend on the secret -------------------------------

def opening_view_job(x):
    """Open x once (mpc.opened); the server returns what it saw: E = x − A (ring elements)."""
    rank = comm.get().get_rank()
    shared = _share(rank, x if rank == 0 else None, (OPENED,), 0)
    held = Opened(shared)
    held.release()
    return held.e.clone()


OPENED = 4096


def bit_chi2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample test of each of the 64 bit positions of two samples of ring elements: the sum
    over bits of z² for equal frequencies of ones (chi-square with 64 dof when independent)."""
    bits = torch.arange(64)
    ones_a = ((a.unsqueeze(-1) >> bits) & 1).double().mean(0)
    ones_b = ((b.unsqueeze(-1) >> bits) & 1).double().mean(0)
    pooled = (ones_a + ones_b) / 2
    variance = (pooled * (1 - pooled) * 2 / a.numel()).clamp(min=1e-12)
    return float(((ones_a - ones_b) ** 2 / variance).sum())


def server_views(secrets):
    return [sim.run(PartyJob(opening_view_job, (x,)), PartyJob(opening_view_job, (None,)))["server"].value
            for x in secrets]


def test_the_servers_view_of_an_opening_is_independent_of_the_secret(monkeypatch):
    zeros = torch.zeros(OPENED, dtype=torch.float64)
    big = torch.full((OPENED,), 1000.0, dtype=torch.float64)
    a, b = server_views([zeros, big])
    # 64 degrees of freedom: above 130 has p < 1e-6 when the views do not depend on the secret
    assert bit_chi2(a, b) < 130
    # positive control: with every mask forced to zero (test-only generator) the views differ
    monkeypatch.setenv("SECPTUNE_TEST_ONLY_RNG", "zero")
    a, b = server_views([zeros, big])
    assert bit_chi2(a, b) > 1000


# ---- the simulation itself: fails loudly, leaves no state behind ----------------------------------

def raising_job(role_to_fail: str):
    rank = comm.get().get_rank()
    if ("owner", "server")[rank] == role_to_fail:
        raise ValueError(f"boom in the {role_to_fail}")
    x = crypten.cryptensor(torch.ones(3), src=0)
    return reveal_to(x * x, 0)


def out_of_step_job():
    """The server opens one tensor more than the owner: it waits for a message never sent."""
    open_shares([torch.zeros(2, dtype=torch.int64)])
    if comm.get().get_rank() == 1:
        open_shares([torch.zeros(2, dtype=torch.int64)])


@pytest.mark.parametrize("role", ["owner", "server"])
def test_a_party_that_raises_fails_the_run_at_once_naming_it(role):
    with pytest.raises(sim.SimFailed, match=f"the {role} failed: ValueError: boom in the {role}") as e:
        sim.run(PartyJob(raising_job, (role,)), PartyJob(raising_job, (role,)), timeout_s=30)
    assert e.value.role == role


def test_a_protocol_out_of_step_fails_instead_of_hanging():
    job = PartyJob(out_of_step_job)
    with pytest.raises(sim.SimFailed, match="no party can go on .*the server waits for message"):
        sim.run(job, job, timeout_s=30)


LOOPING = threading.Event()


def looping_job():
    """The server never answers: it loops (without waiting for a message) until the test ends."""
    if comm.get().get_rank() == 1:
        while not LOOPING.wait(0.01):
            pass
        raise RuntimeError("released by the test")
    open_shares([torch.zeros(2, dtype=torch.int64)])


def test_a_party_that_loops_fails_the_run_after_its_timeout():
    LOOPING.clear()
    before = (crypten.is_initialized(), crypten_seam.applied())
    job = PartyJob(looping_job)
    try:
        with pytest.raises(sim.SimFailed, match=r"did not end within 2 s \(still running: owner, server, dealer\)"):
            sim.run(job, job, timeout_s=2)
    finally:
        LOOPING.set()
    assert (crypten.is_initialized(), crypten_seam.applied()) == before


def test_a_run_leaves_crypten_and_the_process_as_it_found_them():
    before = (crypten_seam.applied(), crypten_seam.party_state(), os.environ.get("RANK"),
              crypten.cfg.mpc.provider, torch.distributed.init_process_group, dealer._CLIENT_CHAIN.count)
    x = torch.ones(2, 2, dtype=torch.float64)
    assert check_square(x, secure("square", [x]))
    after = (crypten_seam.applied(), crypten_seam.party_state(), os.environ.get("RANK"),
             crypten.cfg.mpc.provider, torch.distributed.init_process_group, dealer._CLIENT_CHAIN.count)
    assert after == before


def test_the_simulated_cost_is_the_protocols():
    """Bytes and rounds as counted at the transport (tests/test_truncation.py measures the same
    op on spawned parties): one opening of both slots."""
    x = torch.rand(50, dtype=torch.float64)
    _, cost = run_op(sim.run, "exact_truncate", x)
    assert (cost["bytes"], cost["rounds"]) == (8 * 2 * x.numel(), 1)


# Module-level objects of mpc that every party of a process may share (the simulation keeps the
# others per party: sim.per_party_names()), and why.
SHARED = {
    "mpc.accounting.COMMUNICATOR_ACCOUNTS": "constant table",
    "mpc.approx.FOURIER_KINDS": "constant table",
    "mpc.approx.NO_MONITOR": "the no-op monitor (samples=0): keeps nothing under MPC",
    "mpc.costmodel.LAN": "constant", "mpc.costmodel.WAN": "constant", "mpc.costmodel.WAN_FAST": "constant",
    "mpc.crypten_seam._APPLIED": "the process's patches of its one CrypTen (the same for every party)",
    "mpc.dealer._FUNCTIONS": "registry filled at import", "mpc.dealer._SHAPE_ARGS": "registry filled at import",
    "mpc.dealer._RELEASE_HOOKS": "registry filled at import",
    "mpc.fourier.ACTIVATIONS": "constant table", "mpc.fourier.REFERENCES": "constant table",
    "mpc.jobstate._RESETS": "registry filled at import", "mpc.jobstate._BASELINE": "the persistent cluster's, unused here",
    "mpc.netns._COUNTER": "deployment tests' network namespaces", "mpc.netns._CACHE": "deployment tests' network namespaces",
    "mpc.roles.RANK": "constant table", "mpc.session.RANK": "constant table", "mpc.transport._OPS": "constant table",
}


def module_state() -> set[str]:
    """``module.name`` of every module-level container, counter or mpc-defined object in mpc."""
    dealer.registered()  # imports every mpc module
    found = set()
    for name, module in list(sys.modules.items()):
        if name != "mpc" and not name.startswith("mpc."):
            continue
        for attr, value in vars(module).items():
            if attr.startswith("__") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                continue
            mutable = isinstance(value, (dict, list, set, collections.Counter, collections.deque, itertools.count))
            if mutable or type(value).__module__.startswith("mpc."):
                found.add(f"{name}.{attr}")
    return found


def test_every_module_level_state_of_mpc_is_per_party_in_the_simulation_or_declared_shared(monkeypatch):
    """A party process has its own copy of each; the simulation must swap any that a party changes."""
    found = module_state()
    assert sim.per_party_names() <= found  # the simulation's names still exist
    assert found - sim.per_party_names() - set(SHARED) == set()
    # positive control: new module-level state in a protocol file is reported
    monkeypatch.setattr(fixed_weights, "_NEW_CACHE", {}, raising=False)
    assert module_state() - sim.per_party_names() - set(SHARED) == {"mpc.fixed_weights._NEW_CACHE"}
