"""Party jobs used by tests (module level so that spawned processes can import them)."""

import os

import torch

from secptune import secure


def server_dies_after_start(model_dir: str):
    """A server that joins the session and then dies without a word."""
    import crypten

    crypten.cryptensor(torch.zeros(3), src=1)
    os._exit(3)


def owner_waits_forever(request, private):
    """An owner that keeps computing until its peer goes away."""
    import crypten

    while True:
        x = crypten.cryptensor(torch.ones(64), src=0)
        (x * x).sum()


def server_leaks_weights(model_dir: str, canaries):
    """Negative control: a server that sends a weight matrix in the clear."""
    import crypten.communicator as comm
    from mpc import accounting
    from secptune.arch import arch_from_config, extract_weights
    from secptune.checkpoints import load_hf_model

    accounting.set_canaries(canaries)
    model = load_hf_model(model_dir)
    w = extract_weights(model, arch_from_config(model.config))["l0.q.w"]
    comm.get().broadcast((w * 2**16).long(), src=1)


def owner_receives_broadcast(shape, canaries):
    import crypten.communicator as comm
    from mpc import accounting

    accounting.set_canaries(canaries)
    comm.get().broadcast(torch.zeros(shape, dtype=torch.long), src=1)


__all__ = ["secure"]
