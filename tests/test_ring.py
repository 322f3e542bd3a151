"""ring_matmul equals torch's int64 matmul (mod 2^64) bit for bit, alone and inside CrypTen."""

import pytest
import torch

from mpc import crypten_seam, ring
from mpc.ring import CHUNK_K, LIMB_BITS, ring_matmul, split_limbs

FULL = dict(low=-(2**63), high=2**63 - 1, dtype=torch.int64)

# Values whose limbs are all at the extremes of the balanced-limb range:
# NEG has d0 = d1 = -2^21, d2 = 2^19 (products up to 2^42 = the bound used for CHUNK_K);
# POS has d0 = d1 = 2^21 - 1 (odd products, so an inexact float sum would show).
NEG = 2**63 - 2**43 - 2**21
POS = (2**21 - 1) * (1 + 2**22) + (2**19 - 1) * 2**44


def rand(*shape, gen=None):
    return torch.randint(size=shape, generator=gen, **FULL)


def check(a, b):
    got = ring_matmul(a, b, method="limbs")
    want = torch.matmul(a, b)
    assert got.shape == want.shape and got.dtype == torch.int64 and got.is_contiguous()
    assert torch.equal(got, want)


SHAPES = [
    ((37, 50), (50, 29)),  # 2-D
    ((64, 64), (64, 64)),
    ((2, 3, 20, 40), (40, 33)),  # batched @ matrix: folded into one GEMM
    ((20, 40), (2, 3, 40, 33)),  # matrix @ batched: transposed, one GEMM
    ((4, 20, 40), (4, 40, 7)),  # batched @ batched: bmm
    ((3, 1, 20, 40), (5, 40, 7)),  # broadcasting batch dims
    ((1, 20, 40), (3, 40, 7)),
    ((40,), (40, 33)),  # vectors
    ((33, 40), (40,)),
    ((40,), (2, 3, 40, 5)),
    ((2, 3, 33, 40), (40,)),
    ((100,), (100,)),
    ((1, 1), (1, 1)),
    ((3, 5000), (5000, 4)),  # K > CHUNK_K: three exact chunks
]


@pytest.mark.parametrize("sa,sb", SHAPES)
def test_random_full_range(sa, sb):
    gen = torch.Generator().manual_seed(hash((sa, sb)) % 2**31)
    check(rand(*sa, gen=gen), rand(*sb, gen=gen))


def test_negative_and_extreme_values():
    edge = torch.tensor(
        [-(2**63), 2**63 - 1, 0, -1, 1, -(2**32), 2**32 - 1, 65535, -(2**21), 2**21, NEG, POS],
        dtype=torch.int64,
    )
    a = edge.repeat(30, 5)[:, :40]
    b = edge.flip(0).repeat(40, 3)
    check(a, b)
    check(-a, b)
    check(torch.full((9, 70), -(2**63)), torch.full((70, 5), -(2**63)))
    check(torch.full((9, 70), 2**63 - 1), torch.full((70, 5), -1))


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(1)
    a = rand(50, 30, gen=gen).t()  # [30, 50] transposed view
    b = rand(90, 50, gen=gen)[::2].t()  # [50, 45] strided view
    check(a, b)
    check(rand(1, 30, 50, gen=gen).expand(4, 30, 50), rand(4, 50, 6, gen=gen))


def test_limbs_are_balanced_and_exact():
    x = torch.cat([rand(10000), torch.tensor([-(2**63), 2**63 - 1, 0, -1, NEG, POS])])
    d0, d1, d2 = split_limbs(x)
    assert torch.equal(d0 + (d1 << LIMB_BITS) + (d2 << 2 * LIMB_BITS), x)  # mod 2^64
    half = 2 ** (LIMB_BITS - 1)
    assert d0.abs().max() <= half and d1.abs().max() <= half and d2.abs().max() <= 2**19
    n, p = split_limbs(torch.tensor([NEG, POS]))[:2]
    assert n.tolist() == [-half, half - 1] and p.tolist() == [-half, half - 1]


@pytest.mark.parametrize("k", [CHUNK_K, CHUNK_K + 5])
def test_inner_dimension_at_exactness_limit(k):
    # every limb at its extreme: each float64 GEMM sums K products of ~2^42, reaching 2^53
    for va, vb in ((NEG, NEG), (POS, POS), (NEG, POS)):
        check(torch.full((3, k), va), torch.full((k, 2), vb))


def test_long_narrow_inner_dimension():
    # [2 x (2^21 + 5)] @ [(2^21 + 5) x 1]: 1025 chunks, worst-case limbs in every one
    k = 2**21 + 5
    a = torch.stack([torch.full((k,), POS), torch.full((k,), -1)])
    b = torch.full((k, 1), POS)
    check(a, b)


def test_chunk_limit_is_needed(monkeypatch):
    # negative control: one float64 sum over 4 * CHUNK_K odd ~2^42 products exceeds
    # 2^53 and rounds, so the checks above would catch a too-large chunk
    k = 4 * CHUNK_K
    a, b = torch.full((2, k), POS), torch.full((k, 2), POS)
    monkeypatch.setattr(ring, "CHUNK_K", k)
    assert not torch.equal(ring_matmul(a, b, method="limbs"), torch.matmul(a, b))


def test_empty_and_shape_errors():
    check(torch.zeros((0, 3), dtype=torch.int64), torch.ones((3, 4), dtype=torch.int64))
    check(torch.zeros((3, 0), dtype=torch.int64), torch.ones((0, 4), dtype=torch.int64))
    with pytest.raises(RuntimeError):
        ring_matmul(torch.ones(3, 4, dtype=torch.int64), torch.ones(5, 2, dtype=torch.int64), method="limbs")
    with pytest.raises(RuntimeError):
        ring_matmul(torch.ones(2, 3, 4, dtype=torch.int64), torch.ones(3, 4, 5, dtype=torch.int64), method="limbs")


def test_rejects_non_int64():
    with pytest.raises(TypeError):
        ring_matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(TypeError):
        ring_matmul(torch.ones(2, 2, dtype=torch.int32), torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(TypeError):
        ring_matmul(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2))
    with pytest.raises(ValueError):
        ring_matmul(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64), method="x")


def test_auto_policy_and_env(monkeypatch):
    a, b = rand(20, 30), rand(30, 10)
    monkeypatch.setenv("MPC_RING_MATMUL", "auto")
    # CPU: torch's int64 kernel where it is vectorised (AVX-512), limbs otherwise
    assert ring._use_limbs(a, b, ring._method_default()) == (not ring._cpu_has_fast_int64())
    assert torch.equal(ring_matmul(a, b), a @ b)
    monkeypatch.setenv("MPC_RING_MATMUL", "limbs")
    assert ring._use_limbs(a, b, ring._method_default())
    assert torch.equal(ring_matmul(a, b), a @ b)


def test_crypten_torch_proxy_routes_only_int64_matmuls():
    from crypten.cuda import CUDALongTensor

    proxy = ring.torch_proxy(torch)  # what mpc.crypten_seam installs in three CrypTen modules
    assert proxy.matmul is not torch.matmul
    assert proxy.randint is torch.randint and proxy.Tensor is torch.Tensor
    # floats and extra arguments pass through to torch.matmul
    f = torch.randn(3, 4)
    assert torch.equal(proxy.matmul(f, f.t()), torch.matmul(f, f.t()))
    a, b = rand(5, 6), rand(6, 7)
    ring.calls.clear()
    assert torch.equal(proxy.matmul(a, b), a @ b)
    assert sum(ring.calls.values()) == 1  # the int64 pair went through ring_matmul
    # CrypTen's GPU wrapper is unwrapped and the result re-wrapped (on CPU data here)
    wa, wb = CUDALongTensor(), CUDALongTensor()
    wa._tensor, wb._tensor = a, b
    out = proxy.matmul(wa, wb)
    assert isinstance(out, CUDALongTensor) and torch.equal(out._tensor, a @ b)


# ---- CrypTen end to end: owner, server and dealer (TTP) as spawned processes ----


def crypten_matmuls(x_int, w_int, x_f, w_f, pub):
    """Party job: secret-shared int64 (precision 0) and fixed-point matmuls."""
    import crypten
    from crypten.mpc.primitives import ArithmeticSharedTensor as AST

    assert crypten_seam.installed()
    ring.calls.clear()
    a = AST(x_int, precision=0, src=0)
    b = AST(w_int, precision=0, src=1)
    beaver_2d = a.matmul(b).reveal()  # Beaver: eps@b, a@delta, eps@delta; dealer c = a@b
    a3 = AST(x_int.view(2, 3, -1), precision=0, src=0)
    b3 = AST(w_int.view(1, -1, w_int.shape[1]).expand(2, -1, -1).contiguous(), precision=0, src=1)
    beaver_3d = a3.matmul(b3).reveal()  # batched Beaver product (bmm path)
    public = a.matmul(pub).reveal()  # shared @ public int64 matrix
    fixed = crypten.cryptensor(x_f, src=0).matmul(crypten.cryptensor(w_f, src=1)).get_plain_text()
    return beaver_2d, beaver_3d, public, fixed, dict(ring.calls)


def test_crypten_secret_shared_matmul_after_install(monkeypatch, mpc_cluster):
    from mpc import launcher

    monkeypatch.setenv("MPC_RING_MATMUL", "limbs")  # auto may keep torch's kernel on this CPU
    gen = torch.Generator().manual_seed(7)
    x_int, w_int, pub = rand(6, 300, gen=gen), rand(300, 40, gen=gen), rand(300, 9, gen=gen)
    x_f, w_f = torch.randn(6, 300, generator=gen), torch.randn(300, 40, generator=gen) / 10
    job = launcher.PartyJob(crypten_matmuls, (x_int, w_int, x_f, w_f, pub))
    results = mpc_cluster.run(owner=job, server=job, timeout_s=120)
    beaver_2d, beaver_3d, public, fixed, owner_calls = results["owner"].value
    server_calls = results["server"].value[-1]
    assert torch.equal(beaver_2d, torch.matmul(x_int, w_int))
    assert torch.equal(beaver_3d, torch.matmul(x_int.view(2, 3, -1), w_int))
    assert torch.equal(public, torch.matmul(x_int, pub))
    assert torch.allclose(fixed, x_f @ w_f, atol=2e-3)
    # the parties' products went through the limb path (triple shapes come from meta tensors)
    assert owner_calls.get("limbs", 0) >= 10 and set(owner_calls) == {"limbs"}, owner_calls
    assert server_calls.get("limbs", 0) >= 10 and set(server_calls) == {"limbs"}, server_calls
