"""The data owner's role: its process in a secure run, and how it starts one.

The owner holds the texts, the labels, the verbalizer and the prompt; it drives the session
(:class:`secptune.secure.SecureSession`: every command comes from here) and is the only party
that sees scores.  :func:`owner_party` is its process; :func:`run_local` starts all three roles
on this machine, :func:`run_remote` joins a server and a dealer on other hosts
(``secptune party --role server|dealer``).
"""

from __future__ import annotations

from typing import Callable

import torch

from mpc import accounting, launcher
from secptune.secure import MAX_ATTEMPTS, MAX_LABEL_WORDS, OwnerRequest, SecureSession
from secptune.server.party import server_party


def owner_party(
    program: Callable, args: tuple, request: OwnerRequest, verbalizer: torch.Tensor, canaries=None, truth=None,
):
    """The data owner's process: runs ``program(session, *args)`` against the secure model
    (``truth``: a :class:`secptune.privacy.secure_view.OwnerTruthRecorder`, ``--record-view``)."""
    accounting.set_canaries(canaries)
    session = SecureSession(request, verbalizer=verbalizer)
    if truth is not None:
        truth.watch(session)
    try:
        result = program(session, *args)
    finally:
        session.close()
    if truth is not None:
        truth.write()
    return {
        "result": result, "forwards": session.forward_log, "server_traffic": session.server_traffic,
        "checks": session.check_log, **session.state.get("logs", {}),
    }


def run_local(
    model_dir: str,
    program: Callable,
    args: tuple,
    request: OwnerRequest,
    verbalizer: torch.Tensor,
    canaries: dict | None = None,
    timeout_s: float = 24 * 3600.0,
    max_labels: int = MAX_LABEL_WORDS,
    launch: Callable | None = None,
    view=None,
    truth=None,
    layers: int | None = None,
) -> dict[str, launcher.PartyResult]:
    """Launch owner, server and dealer on this machine and run ``program`` on the owner
    (``max_labels``: the server's cap on label words per query; ``launch``: runs the two
    jobs as :func:`mpc.launcher.run_local` does, the default; tests pass a
    :class:`mpc.launcher.LocalCluster`'s ``run``; ``view``/``truth``: the server's view
    recorder spec and the owner's truth recorder of ``--record-view``; ``layers``: the
    server serves the first layers only, see :func:`secptune.server.party.server_party`)."""
    canaries = canaries or {}
    return (launch or launcher.run_local)(
        owner=launcher.PartyJob(owner_party, (program, args, request, verbalizer, canaries.get("owner"), truth)),
        server=launcher.PartyJob(server_party, (model_dir, canaries.get("server"), max_labels, view, layers)),
        timeout_s=timeout_s,
    )


def run_remote(
    program: Callable,
    args: tuple,
    request: OwnerRequest,
    verbalizer: torch.Tensor,
    network,
    timeout_s: float | None = None,
) -> dict[str, launcher.PartyResult]:
    """Run ``program`` as the data owner against a server and dealer on other hosts.

    ``network`` (:class:`mpc.net.Network`, role ``owner``) says where they are; they
    run ``secptune party --role server|dealer``.  Returns the owner's PartyResult and,
    under ``server``, the traffic the server reported at the end of the session.
    """
    owner = launcher.run_party(
        "owner", network, launcher.PartyJob(owner_party, (program, args, request, verbalizer, None)), timeout_s
    )
    server = launcher.PartyResult(role="server", traffic=owner.value.get("server_traffic") or {})
    return {"owner": owner, "server": server}


def range_events(forward_log: list[dict]) -> dict:
    """Owner side: the range events of a session's forwards (``forward_log`` entries).

    ``out_of_range``: forwards whose range bit was 1; ``calls``: indices of the
    :meth:`secptune.secure.SecureSession.scores` calls they belong to (e.g. `infer`'s batches);
    ``wild_retries``: forwards requested again because their scores were wild."""
    out = {"forwards": len(forward_log), "out_of_range": 0, "calls": [], "wild_retries": 0}
    call = 0
    for entry in forward_log:
        if entry.get("range_event"):
            out["out_of_range"] += 1
            out["calls"].append(call)
        elif entry.get("wild") and entry.get("attempts", 1) < MAX_ATTEMPTS:
            out["wild_retries"] += 1
            continue  # the same call goes on with another forward
        call += 1
    return out
