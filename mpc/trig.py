"""Sines and cosines of secret values in one round, with the dealer's help.

Angles are measured in *turns* of a power-of-two period: for a secret x whose
fixed-point encoding X = x·2^16 is taken mod 2^bits, θ = 2π(X mod 2^bits)/2^bits
is the angle of x on a circle of 2^(bits-16) units.  A mask on that circle hides x:

* offline, the dealer draws T uniform in Z_2^64 and hands out shares of
  cos(nτ), sin(nτ) for n = 1..K, τ = 2π(T mod 2^bits)/2^bits (the parties hold
  shares of T from the generators they share with the dealer);
* online, each party sends the low ``bits`` bits of its share of X + T — one
  opening of 2 (bits ≤ 16) or 4 bytes per element, one round; the opened
  δ = (X + T) mod 2^bits is uniform whatever x is, so it reveals nothing;
* then with the public angle θ = 2πδ/2^bits (= angle of x + τ):
  cos n(θ−τ) = cos nθ cos nτ + sin nθ sin nτ,  sin n(θ−τ) = sin nθ cos nτ − cos nθ sin nτ:
  public values times shares, all local.

So every harmonic of the same x costs the same single opening; only the dealer's
traffic grows with K.  Truncation errors of CrypTen's two-party fixed point are
multiples of 2^48 in the ring, so they vanish mod 2^bits (bits ≤ 31): the angle
is immune to them.  CrypTen's own ``cos``/``sin`` take ~10 rounds of squarings
and are inaccurate outside a few periods.
"""

from __future__ import annotations

import math

import torch

from mpc import accounting
from mpc.dealer import dealer_function, party_draw, request
from mpc.tensorops import from_product_shares

FRAC_BITS = 16  # CrypTen's fixed-point precision: the turn of a unit period is the low 16 bits
MAX_BITS = 31  # the opened residues travel as int32


ANCHOR = 8  # harmonics by rotation restart from a direct cos/sin every ANCHOR steps


def harmonic_table(t: torch.Tensor, count: int) -> torch.Tensor:
    """[cos nt (n=1..count), sin nt (n=1..count)] stacked on a new first dim, float64.

    By rotation, (cos, sin)(n+1)t = rotation of (cos, sin)nt by t: four products and two sums
    per harmonic instead of a cos and a sin, restarted from the direct cos/sin of (n·t) every
    :data:`ANCHOR` harmonics.  Error bound: each rotation adds at most ~4 ulp (2^-52) to an
    entry of magnitude ≤ 1, so ≤ ANCHOR−1 rotations after an anchor (itself the direct
    formula) add ~3e-15; both this and the direct formula carry the rounding of n·t
    (≤ n·2π·2^-53 ≈ 1e-13 at n = 128), so they differ by < 1e-12, far below half a fixed-point
    unit (2^-17 ≈ 7.6e-6): after scaling by 2^16 and rounding, an entry differs from the direct
    formula's only where that one lies within ~1e-7 units of a rounding boundary, and then by
    one unit (tested).
    """
    out = torch.empty((2 * count, *t.shape), dtype=torch.float64)
    c1, s1 = t.cos(), t.sin()
    c, s = c1, s1
    for i in range(count):  # row i holds harmonic n = i + 1
        if i and i % ANCHOR == 0:
            angle = t * (i + 1)
            c, s = angle.cos(), angle.sin()
        elif i:
            c, s = c * c1 - s * s1, s * c1 + c * s1
        out[i], out[count + i] = c, s
    return out


@dealer_function("harmonics")
def _deal_harmonics(server, size, bits, count):
    """Owner's shares of [cos nτ (n=1..count), sin nτ (n=1..count)] for the parties' PRSS draw T."""
    t_ring = server.prss(torch.Size(size[1:]))
    t = (t_ring & (2**bits - 1)).double() * (2 * math.pi / 2**bits)
    values = harmonic_table(t, count).mul_(2**FRAC_BITS).round_().long()
    return values.sub_(server.prss_server(torch.Size(size)))


def _open_low_bits(low: torch.Tensor, bits: int) -> torch.Tensor:
    """Sum of both parties' ``bits``-bit values mod 2^bits: one simultaneous exchange.

    (gloo cannot all-reduce small integer types, so each party sends its half and adds locally.)
    """
    import crypten.communicator as comm

    channel = comm.get()
    peer = 1 - channel.get_rank()
    mine = low.to(torch.int16 if bits <= 16 else torch.int32).contiguous()
    theirs = torch.empty_like(mine)
    with accounting.ring_width(bits):
        pending = [channel.isend(mine, dst=peer), channel.irecv(theirs, src=peer)]
        for request_ in pending:
            request_.wait()
    opened = (mine.long() + theirs.long()) & (2**bits - 1)
    accounting.audit_opened(opened, bits)
    return opened


def masked_angle(x, bits: int, count: int):
    """One opening of a secret MPCTensor x on a circle of 2^(bits-16) units.

    Returns (θ, cos_t, sin_t): the public angle θ [*x] and this party's int64
    shares (scale 2^16) of cos nτ and sin nτ [count, *x] for n = 1..count.
    """
    if x.encoder.scale != 2**FRAC_BITS:
        raise ValueError(f"trigonometry needs {FRAC_BITS}-bit fixed point, got scale {x.encoder.scale}")
    if not FRAC_BITS <= bits <= MAX_BITS:
        raise ValueError(f"the circle must have {FRAC_BITS}..{MAX_BITS} bits, got {bits}")
    size = x.size()
    t_share = party_draw(size, device=x.device)
    dealt = request("harmonics", (2 * count, *size), bits, count, device=x.device)
    delta = _open_low_bits((x.share + t_share) & (2**bits - 1), bits)
    theta = delta.double() * (2 * math.pi / 2**bits)
    return theta, dealt[:count], dealt[count:]


def combine(terms):
    """Σ public_i · share_i for (public float tensor, this party's int64 share at scale
    2^16) pairs: integer products summed in the ring and truncated once."""
    acc = None
    for public, share in terms:
        term = (public * 2**FRAC_BITS).round().long() * share
        acc = term if acc is None else acc.add_(term)
    return from_product_shares(acc)


def sincos_turns(u):
    """(sin 2πu, cos 2πu) for a secret MPCTensor u (precision 16 bits); one round, 2 bytes per element."""
    angle, cos_t, sin_t = masked_angle(u, FRAC_BITS, 1)
    sin_a, cos_a = angle.sin(), angle.cos()
    cos_u = combine([(cos_a, cos_t[0]), (sin_a, sin_t[0])])
    sin_u = combine([(-cos_a, sin_t[0]), (sin_a, cos_t[0])])
    return sin_u, cos_u


def sincos_turns_plain(u: torch.Tensor):
    """Plaintext counterpart (the oracle).  Whole turns are dropped first (exact in either
    precision): 2π·u rounded in float32 would put an error of ~|u|·10^-6 into the angle."""
    angle = 2 * math.pi * (u - u.round())
    return angle.sin(), angle.cos()
