"""Party jobs for the randomness attacks (module level: spawned parties import them)."""

import torch


def server_collects_owner_masks(model_dir: str):
    """A server that follows the protocol and keeps what it can compute of the owner's masks.

    The weight opening F = W − B (mpc.fixed_weights) gives the server, who knows W and
    its share B1, the owner's share B0 = W − F − B1: raw consecutive outputs of the
    owner's dealer stream.  Returns them with the session's own result.
    """
    from mpc import fixed_weights
    from secptune import secure
    from secptune.server.party import server_party

    encoded, captured = {}, {}
    share, prepare = secure.share_input, fixed_weights.prepare

    def recording_share(value, shape, src):
        tensor = share(value, shape, src)
        if value is not None and src == secure.SERVER_RANK:
            encoded[id(tensor)] = tensor.encoder.encode(value.double())
        return tensor

    def capturing_prepare(weights, fuse=()):
        out = prepare(weights, fuse)
        group = next(v.group for v in out.values() if isinstance(v, fixed_weights.FixedWeight))
        w = torch.cat([encoded[id(weights[n])] for n in group.names], dim=1)
        captured["owner_masks"] = (w - group.public - group.local).flatten()  # B0 = W − F − B1
        return out

    secure.share_input, fixed_weights.prepare = recording_share, capturing_prepare
    try:
        result = server_party(model_dir)
    finally:  # a persistent party runs other jobs after this one
        secure.share_input, fixed_weights.prepare = share, prepare
    return {"result": result, "owner_masks": captured["owner_masks"]}



def ask_dealer(name: str, size: tuple, args: tuple):
    """Party job: one dealer request as given (the owner and the server may be given different ones)."""
    from mpc.dealer import request

    return request(name, size, *args)
