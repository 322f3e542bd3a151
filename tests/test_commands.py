"""Typed commands (secptune.commands): the server runs only registered commands its session
accepts, with every field of its declared type; the owner refuses to send others."""

import pytest

from conftest import prepared_inputs
from mpc import launcher
from secptune import secure
from secptune.bench.forward import UseLayers
from secptune.commands import REGISTRY, CommandError, decode
from secptune.lockstep import OWNER_RANK, broadcast_from
from secptune.scoring import score_batches
from secptune.secure import Forward, LoadTexts, SecureSession
from secptune.server.party import SERVER_COMMANDS, server_party

ACCEPTED = secure.SESSION_COMMANDS + SERVER_COMMANDS


def test_decode_returns_the_typed_command():
    assert decode({"op": "forward", "texts": 0, "R": 3, "P": 5}, ACCEPTED) == Forward(texts=0, R=3, P=5)
    cmd = LoadTexts(B=2, n=7, types=False, start=1)
    assert decode(cmd.to_wire(), ACCEPTED) == cmd
    assert decode({"op": "train", "texts": 0, "P": 2, "method": "sft", "lr": 1, "step": True}, ACCEPTED).lr == 1


@pytest.mark.parametrize(
    "message, problem",
    [
        ("forward", "expected a command"),
        ({"texts": 0}, "expected a command"),
        ({"op": "shell", "cmd": "rm -rf /"}, "runs only: forward, texts, train"),
        ({"op": "layers", "layers": 0}, "runs only"),  # registered (by the benchmark) but not accepted here
        ({"op": "forward", "texts": 0, "R": 3}, "needs fields"),
        ({"op": "forward", "texts": 0, "R": 3, "P": 5, "extra": 1}, "needs fields"),
        ({"op": "forward", "texts": "0", "R": 3, "P": 5}, "texts='0'"),
        ({"op": "forward", "texts": 0.5, "R": 3, "P": 5}, "texts=0.5"),
        ({"op": "forward", "texts": True, "R": 3, "P": 5}, "texts=True"),  # a bool is not an int here
        ({"op": "texts", "B": 2, "n": 7, "types": 1, "start": 0}, "types=1"),  # nor an int a bool
    ],
)
def test_decode_refuses_what_the_server_does_not_run(message, problem):
    with pytest.raises(CommandError, match=problem.replace("(", r"\(").replace("?", r"\?")):
        decode(message, ACCEPTED)


def test_registry_holds_the_session_and_feature_commands():
    assert {"texts", "forward", "stop", "train", "layers"} <= set(REGISTRY)
    assert REGISTRY["layers"] is UseLayers


def owner_sends(request, verbalizer, batches, raw: bool):
    """Owner: try a command the product server does not run — through the session (refused
    locally, the session goes on) or as a raw message (the server must refuse it)."""
    session = SecureSession(request, verbalizer=verbalizer)
    if raw:
        broadcast_from(UseLayers(layers=0).to_wire(), OWNER_RANK)
        return "sent"
    try:
        session.run(UseLayers(layers=0))
    except CommandError as exc:
        refused = str(exc)
    try:
        scores = score_batches(session, batches)
    finally:
        session.close()
    return refused, scores


def server_runs(model_dir):
    try:
        return server_party(model_dir)
    except CommandError as exc:
        return f"refused: {exc}"


def test_unaccepted_commands_are_refused_on_both_sides(mpc_cluster):
    _, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    request = secure.OwnerRequest(labels=len(prep.label_ids), expected_vocab=prep.arch.vocab_size)
    for raw in (False, True):
        results = mpc_cluster.run(
            owner=launcher.PartyJob(owner_sends, (request, prep.verbalizer, prep.batches[:1], raw)),
            server=launcher.PartyJob(server_runs, (str(prep.model_dir),)),
            timeout_s=300,
        )
        got, served = results["owner"].value, results["server"].value
        if not raw:  # the owner's own check: nothing sent, and the session still scores
            refused, scores = got
            assert "does not run command 'layers'" in refused and "texts, forward, train" in refused
            assert scores.shape == (2, len(prep.label_ids)) and len(served["forwards"]) == 1
        else:  # a raw message the server does not run: the server refuses it (positive control)
            assert got == "sent"
            assert served.startswith("refused: the data owner sent command 'layers'"), served
