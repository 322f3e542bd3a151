"""The few collective steps every secure command is built from, for both computing parties.

CrypTen runs SPMD: the owner and the server call the same functions in the same order; the
party that owns a value passes it, the other passes only its (public) shape.  These helpers
keep that convention in one place so role code reads as "who provides what".  (CrypTen is
imported where used: importing it needs the seam's import stub, installed by mpc.session.)
"""

from __future__ import annotations

import torch

from mpc.roles import RANK

OWNER_RANK, SERVER_RANK = RANK["owner"], RANK["server"]  # CrypTen process ranks (mpc.roles)


def rank() -> int:
    """This process's CrypTen rank (OWNER_RANK or SERVER_RANK)."""
    import crypten.communicator as comm

    return comm.get().get_rank()


def share_input(value, shape, src: int):
    """Secret-share ``value`` from party ``src``; the other party passes only the shape."""
    import crypten

    if rank() == src:
        return crypten.cryptensor(value.double(), src=src)
    return crypten.cryptensor(torch.zeros(shape, dtype=torch.float64), src=src)


def broadcast_from(obj, src: int):
    """Party ``src``'s public ``obj`` on both parties (the other passes anything, e.g. None)."""
    import crypten.communicator as comm

    return comm.get().broadcast_obj(obj if rank() == src else None, src)
