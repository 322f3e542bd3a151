"""Sine and cosine of secret values in one round, with the dealer's help.

Angles are measured in *turns*: ``sincos_turns(u)`` returns sin(2πu), cos(2πu).
With 16-bit fixed point, the ring encoding of u taken mod 2^16 is exactly the
fractional turn, so the period divides the ring and a mask can hide it:

* offline, the dealer draws T uniform in Z_2^64 and hands out shares of T, of
  sin(2πT/2^16) and of cos(2πT/2^16);
* online, each party sends the low 16 bits of its share of u + T — one
  opening of 2 bytes per element, one round; δ = (u + T) mod 2^16 is uniform
  whatever u is, so it reveals nothing;
* then, with the public angle a = 2πδ/2^16 = 2πu + t:
  cos(2πu) = cos a cos t + sin a sin t,  sin(2πu) = sin a cos t − cos a sin t,
  products of public values with shares: local.

Truncation errors of CrypTen's two-party fixed point are multiples of 2^48 in
the ring, so they vanish mod 2^16: these features are immune to them.
CrypTen's own ``cos``/``sin`` take ~10 rounds of squarings and are inaccurate
outside a few periods.
"""

from __future__ import annotations

import math

import torch

from mpc.dealer import dealer_function, party_draw, request

TURN_BITS = 16  # must equal the fixed-point precision: the turn is the fractional part


@dealer_function("sincos")
def _deal_sincos(server, size):
    """Owner's shares of (sin t, cos t) [2, *size] for T = the parties' PRSS draw."""
    t_ring = server.prss(torch.Size(size[1:]))
    t = (t_ring & (2**TURN_BITS - 1)).double() * (2 * math.pi / 2**TURN_BITS)
    values = torch.stack([t.sin(), t.cos()]) * 2**TURN_BITS
    return values.round().long() - server.prss_server(torch.Size(size))


def _open_low_bits(low: torch.Tensor) -> torch.Tensor:
    """Sum of both parties' 16-bit values mod 2^16: one simultaneous exchange of int16.

    (gloo cannot all-reduce int16, so each party sends its half and adds locally.)
    """
    import crypten.communicator as comm

    channel = comm.get()
    peer = 1 - channel.get_rank()
    mine = low.to(torch.int16).contiguous()
    theirs = torch.empty_like(mine)
    pending = [channel.isend(mine, dst=peer), channel.irecv(theirs, src=peer)]
    for request_ in pending:
        request_.wait()
    return (mine.long() + theirs.long()) & (2**TURN_BITS - 1)


def sincos_turns(u):
    """(sin 2πu, cos 2πu) for a secret MPCTensor u (precision 16 bits); one round."""
    from crypten.mpc import MPCTensor

    encoder = u.encoder
    if encoder.scale != 2**TURN_BITS:
        raise ValueError(f"sincos_turns needs {TURN_BITS}-bit fixed point, got scale {encoder.scale}")
    size = u.size()
    t_share = party_draw(size, device=u.device)
    trig_share = request("sincos", (2, *size), device=u.device)
    delta = _open_low_bits((u.share + t_share) & (2**TURN_BITS - 1))
    angle = delta.double() * (2 * math.pi / 2**TURN_BITS)
    sin_a, cos_a = angle.sin(), angle.cos()
    sin_t = MPCTensor.from_shares(trig_share[0], precision=TURN_BITS)
    cos_t = MPCTensor.from_shares(trig_share[1], precision=TURN_BITS)
    cos_u = cos_t * cos_a + sin_t * sin_a
    sin_u = sin_t * (-cos_a) + cos_t * sin_a
    return sin_u, cos_u


def sincos_turns_plain(u: torch.Tensor):
    """Plaintext counterpart (the oracle)."""
    angle = 2 * math.pi * u
    return angle.sin(), angle.cos()
