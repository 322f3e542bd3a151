"""The dealer serves only allow-listed, bounded requests that both parties asked for."""

import pytest
import torch

import attack_jobs
from mpc import dealer, launcher


def _run(launch, owner_request, server_request):
    return launch(
        owner=launcher.PartyJob(attack_jobs.ask_dealer, owner_request),
        server=launcher.PartyJob(attack_jobs.ask_dealer, server_request),
        timeout_s=120,
    )


def test_the_dealer_refuses_what_the_protocol_never_asks_for(mpc_cluster):
    # CrypTen's TTP server ran any method named in a request: this one returns raw stream output
    with pytest.raises(launcher.PartyFailedError, match="not a dealer request"):
        _run(mpc_cluster.run, ("_get_additive_PRSS", (4,), ()), ("_get_additive_PRSS", (4,), ()))
    # an owner asking for more (or other) masks than the server does: refused before any draw
    with pytest.raises(launcher.PartyFailedError, match="differs from what the server asked for"):
        _run(mpc_cluster.run, ("square", (64,), ()), ("square", (4,), ()))
    # control: the same request from both is served, and the shares are a square pair
    results = _run(mpc_cluster.run, ("square", (4,), ()), ("square", (4,), ()))
    assert results["owner"].value.shape == results["server"].value.shape == (4,)


def test_request_sizes_are_bounded_and_calls_checked():
    assert "additive" in dealer.registered() and "_get_additive_PRSS" not in dealer.registered()
    dealer._check_request_shapes({"f": "fixed_masks", "size": [0], "args": [[1000, 1001, 1002, 1003], [[4, 4], [2, 3]]]})
    dealer._check_request_shapes({"f": "truncation_pair", "size": [2, 8], "args": [[16] * 12]})  # not shapes
    with pytest.raises(ValueError, match="above"):
        dealer._check_request_shapes({"f": "additive", "size": [4], "args": [[1 << 20, 1 << 20], [4], "mul"]})
    with pytest.raises(ValueError, match="negative"):
        dealer._check_request_shapes({"f": "square", "size": [-1, 4], "args": []})
    with pytest.raises(ValueError, match="not a shape"):
        dealer._check_request_shapes({"f": "hold_mask", "size": [0], "args": [3, "x"]})
    with pytest.raises(ValueError, match="not served"):
        dealer._op_shape("conv2d", (1, 1), (1, 1))


def test_triple_shapes_follow_torch_broadcasting():
    """The dealer's hand-computed product shapes equal torch's (meta tensors) for mul and matmul."""
    mul = [((4, 1, 3), (2, 3)), ((5,), (1,)), ((), (2, 2)), ((2, 1, 4), (1, 3, 1))]
    matmul = [((3,), (3,)), ((3,), (2, 3, 4)), ((2, 3, 4), (4,)), ((5, 2, 3), (3, 7)), ((1, 4, 2, 3), (6, 1, 3, 5)),
              ((2, 3), (3, 4))]
    for op, cases in (("mul", mul), ("matmul", matmul)):
        for s0, s1 in cases:
            expected = tuple(getattr(torch, op)(torch.empty(s0, device="meta"), torch.empty(s1, device="meta")).shape)
            assert dealer._op_shape(op, s0, s1) == expected, (op, s0, s1)
    for s0, s1 in (((2, 3), (4, 5)), ((3,), (4,)), ((), (3,))):
        with pytest.raises(ValueError):
            dealer._op_shape("matmul", s0, s1)
    with pytest.raises((ValueError, RuntimeError)):
        dealer._op_shape("mul", (2, 3), (4, 3))
