"""Run one secure op on owner-provided inputs and reveal the result to the owner.

Module level so spawned party processes can import it.  ``op`` names a function
in :data:`OPS`; every input tensor is secret-shared by the owner (the server
passes ``None`` placeholders of the same shapes).
"""

import torch


def _sincos(x):
    from mpc.trig import sincos_turns

    s, c = sincos_turns(x)
    return s.stack([s, c]) if hasattr(s, "stack") else torch.stack([s, c])


def _crypten_sincos(x):
    import crypten

    s, c = x.sin(), x.cos()
    return crypten.stack([s, c])


OPS = {"sincos": _sincos, "crypten_sincos": _crypten_sincos}


def run_op(op, shapes, inputs, extra=None):
    """Party job: share ``inputs`` from the owner, run OPS[op], reveal to the owner."""
    import crypten
    import crypten.communicator as comm

    from mpc import accounting
    from mpc.reveal import reveal_to

    rank = comm.get().get_rank()
    shared = [
        crypten.cryptensor(inputs[i] if rank == 0 else torch.zeros(shape, dtype=torch.float64), src=0)
        for i, shape in enumerate(shapes)
    ]
    before = accounting.log().as_dict()
    dealt = accounting.log().from_dealer.bytes
    out = OPS[op](*shared, **(extra or {}))
    after = accounting.log().as_dict()
    cost = {k: after["online"][k] - before["online"][k] for k in ("bytes", "rounds")}
    cost["from_dealer"] = accounting.log().from_dealer.bytes - dealt
    return reveal_to(out, 0), cost


def run(launch, op, *tensors, extra=None):
    """Run ``op`` securely on owner tensors with ``launch`` (the cluster's ``run``, or
    :func:`mpc.launcher.run_local`); returns (revealed result, owner online cost)."""
    from mpc import launcher

    shapes = [tuple(t.shape) for t in tensors]
    results = launch(
        launcher.PartyJob(run_op, (op, shapes, list(tensors), extra)),
        launcher.PartyJob(run_op, (op, shapes, [None] * len(tensors), extra)),
        timeout_s=300,
    )
    return results["owner"].value


def _rfa_fourier(q, k, v):
    from rfa.config import AttentionConfig
    from rfa.random_features import rfa_attention, server_feature_matrices

    cfg = AttentionConfig(features="fourier", num_features=8)
    w = server_feature_matrices(cfg, 1, q.size(-1), q.size(1))
    return rfa_attention(q, k, v, {"q": w["l0.rfa.q"], "k": w["l0.rfa.k"]}, None, cfg, __import__("mpc").approx.ApproxConfig())


OPS["rfa_fourier"] = _rfa_fourier


def _fourier(x, name="silu", bound=16.0):
    from mpc.fourier import activation_series, evaluate

    return evaluate(x, activation_series(name, bound))


OPS["fourier"] = _fourier


def _channel_activation(x, name="silu", base=8.0, wide=()):
    from mpc.approx import ApproxConfig, ChannelBounds, activation

    return activation(x, name, ChannelBounds(base, tuple((b, tuple(c)) for b, c in wide)), ApproxConfig())


OPS["channel_activation"] = _channel_activation


def _normalize(x):
    from mpc import approx

    return approx.normalize(x, 1e-5, approx.ApproxConfig())


OPS["normalize"] = _normalize


def _fourier_exp(x, low=-16.0, high=4.0):
    from mpc.fourier import evaluate, exp_series

    return evaluate(x, exp_series(low, high))


OPS["fourier_exp"] = _fourier_exp


def _fourier_view(x, name="silu", bound=64.0, dealt_values=None):
    """The activation of a non-contiguous view (as the fused gate|up product hands it over);
    ``dealt_values``: a smaller bound on the dealer's values held at once (smaller chunks)."""
    from mpc import fourier
    from mpc.tensorops import cat

    view = cat([x * 0.5, x], dim=-1).narrow(-1, x.size(-1), x.size(-1))
    default = fourier.DEALT_VALUES
    fourier.DEALT_VALUES = dealt_values or default
    try:
        return fourier.evaluate(view, fourier.activation_series(name, bound))
    finally:
        fourier.DEALT_VALUES = default


OPS["fourier_view"] = _fourier_view


def _pow2_scale(v, low=1e-5, high=64.0):
    from mpc.approx import power_of_two_scale
    from mpc.tensorops import cat

    s, s_sq = power_of_two_scale(v, low, high)
    return cat([s, s_sq], dim=-1)


OPS["pow2_scale"] = _pow2_scale


def _exact_truncate(x, gain_bits=25):
    """x·2^25 at scale 2^16 (ring values up to 2^61 for |x| < 2^20) truncated exactly by
    2^25 and by 2^41."""
    from crypten.mpc import MPCTensor

    from mpc.truncation import truncate_shares

    big = x.share * 2**gain_bits
    slots = truncate_shares(torch.stack([big, big]), (gain_bits, gain_bits + 16))
    return MPCTensor.from_shares(slots, precision=16)


OPS["exact_truncate"] = _exact_truncate
