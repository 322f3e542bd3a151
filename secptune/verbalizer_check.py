"""The owner's verbalizer, checked one-hot under MPC before the server shares anything.

The label head is ``verbalizer @ W_out``; a verbalizer that is not one-hot would let one query
read arbitrary linear functions of the server's logits (:func:`checked_verbalizer`).
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import torch

from mpc.opened import Opened
from mpc.tensorops import PRECISION_BITS, open_shares
from secptune.errors import VerbalizerError
from secptune.lockstep import OWNER_RANK, SERVER_RANK, broadcast_from, rank

VERBALIZER_CHALLENGES = 4  # independent random combinations in the one-hot check


def checked_verbalizer(verbalizer, labels: int, vocab: int):
    """The owner's verbalizer [labels, vocab], secret-shared and checked one-hot under MPC.

    Why: the label head is ``verbalizer @ W_out`` and the owner reads its products with
    the hidden state.  With free rows (several 1s, fractions, random projections) one
    query would reveal arbitrary linear functions of the full logit vector instead of
    the scores of ``labels`` words; the server is the party this protects.

    How (both parties, in lockstep; once per session):

    1. The owner shares its entries as *integers* B (scale 1, not fixed point) and the
       session uses 2^16·B — a local multiple, the same encoding as a shared 0/1 at 16-bit
       fixed point — so every entry used is a whole number by construction.  The check
       cannot run on fixed-point encodings Y: any integer polynomial that vanishes at
       Y = 0 and Y = 2^16 has its linear coefficient divisible by 2^16, so it also
       vanishes at Y = 2^48·k (the value 2^32·k) and no product check can refuse those.
    2. B is opened once under a fresh Beaver mask (:class:`mpc.opened.Opened`: one
       exchange of 8 bytes per entry, uniform), which binds the owner's shares; only then
       does the server draw a 32-byte seed from OS randomness and send it, and both
       expand it with SHAKE-256 into public coefficients r_c (per entry) and q_c (per row).
       The owner cannot pick its verbalizer after seeing them.  The server choosing the
       coins is safe: it is the verifier, and an honest owner passes for every choice.
    3. Shares of B² come from the same opening (the dealer's shares of A², no traffic),
       so both hold exact ring shares of z = B² − B (per entry) and s = Σ_row B − 1 (per
       row), and open t_c = Σ r_c·z + Σ q_c·s for c = 1..4 (one exchange of 32 bytes).
    4. Accepted iff every t_c = 0.  Otherwise both sides raise :class:`VerbalizerError`
       and the session ends before the server shares any weight.

    Soundness (Z_2^64 has zero divisors): the used entry 2^16·B is 0 or 1 exactly when
    B mod 2^48 is 0 or 1, and a row of the used matrix sums to 1 exactly when its B sum
    is 1 mod 2^48.  If either fails, some z or s is non-zero mod 2^48 (B and B − 1 are
    coprime), i.e. has at most 47 factors of two, so each t_c is 0 with probability at
    most 2^-17 over the coins, independently: at most 2^-68 for the four.

    What it reveals — opened to both parties, so each decides on its own and neither has
    to trust the other's verdict, in one exchange: t is a function of the owner's
    verbalizer and the public coins only.  For a one-hot verbalizer every t_c is 0, a
    fixed outcome, so the opening tells either party nothing but "one-hot".  The owner
    learns nothing it did not know (it can compute t itself).  For a rejected verbalizer
    the server sees four random combinations of the owner's deviations from one-hot —
    about the rejected matrix, never about the server's model.  Threat model: the owner
    follows the protocol but chooses its input freely; an owner that also alters its
    shares in later steps is out of scope (additive shares carry no MACs).
    """
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    shape = (labels, vocab)
    owner = rank() == OWNER_RANK
    if owner and tuple(verbalizer.shape) != shape:
        raise VerbalizerError(f"the verbalizer has shape {tuple(verbalizer.shape)}; the request says {shape}")
    ints = _verbalizer_integers(verbalizer) if owner else torch.zeros(shape, dtype=torch.long)
    bits = ArithmeticSharedTensor(ints, precision=0, src=OWNER_RANK).share
    # Opened needs the 16-bit label; it works on the ring shares, and only the exact
    # (untruncated) square shares are used
    opened = Opened(MPCTensor.from_shares(bits, precision=PRECISION_BITS))
    seed = broadcast_from(secrets.token_bytes(32) if not owner else None, SERVER_RANK)
    count = VERBALIZER_CHALLENGES * (labels * vocab + labels)
    coins = np.frombuffer(hashlib.shake_256(seed).digest(8 * count), dtype=np.int64).copy()
    coins = torch.from_numpy(coins).to(bits.device).view(VERBALIZER_CHALLENGES, -1)
    r, q = coins[:, : labels * vocab].view(-1, labels, vocab), coins[:, labels * vocab :]
    z = opened._square_shares(last=True) - bits  # shares of B² − B, exact in the ring
    s = bits.sum(-1)  # shares of the row sums; the owner's share carries the − 1
    if owner:
        s = s - 1
    t = (r * z).sum((1, 2)) + (q * s).sum(1)  # int64 arithmetic wraps: exact mod 2^64
    (t,) = open_shares([t])
    if bool((t == 0).all()):
        return MPCTensor.from_shares(bits * 2**PRECISION_BITS, precision=PRECISION_BITS)
    if owner:
        raise VerbalizerError(
            "the server refused the verbalizer: each row must be one-hot (one 1, zeros elsewhere); "
            + _verbalizer_problem(verbalizer)
        )
    raise VerbalizerError(
        "refusing to continue: the data owner's verbalizer failed the one-hot check "
        "(a row is not a single 1 among zeros); nothing was scored"
    )


def _verbalizer_integers(verbalizer: torch.Tensor) -> torch.Tensor:
    """The owner's integer entries B.  An entry that is not a whole number cannot be shared
    at scale 1; it is shared as 2 — not a bit, so the check refuses it like any other."""
    v = verbalizer.double().clamp(-(2.0**62), 2.0**62)
    whole = torch.round(v)
    return torch.where(whole == v, whole, torch.full_like(v, 2.0)).long()


def _verbalizer_problem(verbalizer: torch.Tensor) -> str:
    """Owner side, plaintext: which row is not one-hot (for the owner's own error message)."""
    v = verbalizer.double()
    for i, row in enumerate(v):
        if not bool(((row == 0) | (row == 1)).all()) or float(row.sum()) != 1.0:
            shown = row[row != 0][:4].tolist()
            return f"row {i} is not (its non-zero entries start {shown}, {int((row != 0).sum())} of them)"
    return "every row looks one-hot here, but the shared entries failed the check"
