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


def probe_fresh_state(tag: str):
    """Cluster job: what this party finds at the start of a job (its state must be a fresh
    process's), then leave traces for the next job: config, seed, handles, canaries, a reveal."""
    import crypten
    from crypten.mpc.provider import ttp_provider

    from mpc import accounting, fixed_weights, opened
    from mpc.reveal import reveal_to

    found = {
        "traffic": accounting.log().as_dict(),  # the session's start-up only
        "canaries": accounting.log().canaries,
        "exp_iterations": crypten.cfg.functions.exp_iterations,
        "handles": (next(fixed_weights._HANDLES), next(opened._HANDLES)),
        "torch_draw": torch.rand(3),
        "env": os.environ.get("SECPTUNE_CLUSTER_PROBE"),
    }
    crypten.cfg.temp_override({"functions.exp_iterations": 3}).__enter__()  # left set: the reset must undo it
    torch.manual_seed(12345)
    accounting.set_canaries(torch.arange(5))
    os.environ["SECPTUNE_CLUSTER_PROBE"] = "left by " + tag
    x = crypten.cryptensor(torch.ones(4), src=0)
    found["revealed"] = reveal_to(x * x, 0)
    fixed_weights.prepare({"b.w": crypten.cryptensor(torch.zeros(4, 2), src=1)})  # the dealer keeps its mask
    # last: a draw takes a stream out of step with its other holder
    found["pairwise_draw"] = crypten.generators["next"][torch.device("cpu")].ring((4,))
    found["dealer_draw"] = ttp_provider.TTPClient.get().get_generator().ring((4,))
    return found


__all__ = ["secure"]
