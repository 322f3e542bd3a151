"""Party jobs of a deliberately broken protocol (module level: spawned parties import them).

Test-only: the owner sends every input of its own in the clear and makes it the server's
share (its own share 0), so the sum is still right and the run completes — but the server's
share of the owner's one-hot rows *is* the text.  The secure-view audit must catch it
(tests/test_privacy_secure.py); nothing in secptune can select this variant.
"""

import torch


def _broken_share_input():
    from secptune import secure

    honest = secure.share_input

    def share_input(value, shape, src):
        import crypten.communicator as comm

        shared = honest(value, shape, src)
        if src != secure.OWNER_RANK:
            return shared
        mine = secure.rank() == src
        plain = shared.encoder.encode(value.double()) if mine else torch.zeros(shape, dtype=torch.long)
        comm.get().broadcast(plain, src)  # the plaintext crosses to the server ...
        shared.share = torch.zeros_like(plain) if mine else plain  # ... and is its share
        return shared

    secure.share_input = share_input


def broken_owner(*args):
    from secptune.owner import owner_party

    _broken_share_input()
    return owner_party(*args)


def broken_server(*args):
    from secptune.server.party import server_party

    _broken_share_input()
    return server_party(*args)


def broken_launch(owner, server, timeout_s):
    """A ``launch`` for :func:`secptune.owner.run_local`: the same jobs with the broken sharing."""
    from mpc import launcher

    return launcher.run_local(owner=launcher.PartyJob(broken_owner, owner.args),
                              server=launcher.PartyJob(broken_server, server.args), timeout_s=timeout_s)
