"""`secptune bench iteration` (secptune.bench.iteration): the per-iteration comparison's JSON adds up."""

import json

import pytest

from secptune.cli import main


def run(capsys, *argv):
    code = main(["bench", "iteration", *argv])
    return code, capsys.readouterr()


@pytest.mark.mpc  # the benchmark's own local run: fresh parties
def test_gradient_step_reports_phases_and_extrapolates(capsys):
    code, captured = run(capsys, "--method", "prompt-grad", "--model", "tiny-llama", "--seq", "8", "--batch", "2",
                         "--layers", "1", "--json")
    assert code == 0
    r = json.loads(captured.out)
    assert r["method"] == "prompt-grad" and r["layers_run"] == 1 and r["layers_full"] == 2
    assert r["forward_s"] > 0 and r["backward_s"] >= r["step_s"] > 0
    phases = r["phases"]
    assert set(phases) == {"forward", "backward", "step"}
    sent = {role: sum(phases[p][role]["bytes"] for p in phases) for role in ("owner", "server")}
    assert r["bytes"] == max(sent.values()) > 0
    # backpropagation moves data of its own, comparable to the forward pass
    assert phases["backward"]["owner"]["bytes"] > 0.2 * phases["forward"]["owner"]["bytes"]
    ext = r["extrapolation"]
    assert ext["per_layer"]["bytes"] > 0
    assert ext["total"]["bytes"] == r["bytes"] + ext["per_layer"]["bytes"]  # 1 measured + 1 more layer


@pytest.mark.mpc
def test_forward_only_iteration_has_no_backward(capsys):
    code, captured = run(capsys, "--method", "fot-softmax", "--model", "tiny-llama", "--seq", "8", "--batch", "2", "--json")
    assert code == 0
    r = json.loads(captured.out.strip().splitlines()[-1])
    assert r["method"] == "fot-softmax" and r["backward_s"] == 0.0 and r["forward_s"] > 0
    assert r["command"].startswith("secptune bench iteration --method fot-softmax") and r["machine"]["cpu_count"] >= 1
    assert "git_revision" in r and "command" not in r["forward_report"]  # one stamp per report
    comm = r["forward_report"]["comm"]
    assert r["bytes"] == max(comm["owner"]["online"]["bytes"], comm["server"]["online"]["bytes"]) > 0


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit):
        main(["bench", "iteration", "--method", "adam", "--model", "tiny-llama"])


@pytest.mark.mpc
def test_no_step_stops_after_the_gradients(capsys):
    code, captured = run(capsys, "--method", "sft", "--model", "tiny-llama", "--seq", "8", "--batch", "2", "--no-step",
                         "--json")
    assert code == 0
    r = json.loads(captured.out)
    assert r["step_s"] == 0.0 and "skipped" in r["step"]
    assert r["phases"]["step"]["owner"]["bytes"] == 0 and r["phases"]["backward"]["owner"]["bytes"] > 0
