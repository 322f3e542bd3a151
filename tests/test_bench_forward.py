"""`secptune bench forward` (secptune.bench.forward): its JSON adds up, and settings it cannot run fail clearly."""

import json

import pytest
import torch

from secptune.cli import main


def run(capsys, *argv):
    code = main(["bench", "forward", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cuda_request_fails_clearly_without_a_gpu(capsys):
    code, out, err = run(capsys, "--model", "tiny-llama", "--seq", "8", "--device", "cuda")
    assert code == 2 and out == ""
    assert "--device cuda" in err and "--device cpu" in err
    if not torch.cuda.is_available():
        assert "CUDA is not available" in err


def test_plain_rfa_and_bad_feature_map(capsys):
    code, out, _ = run(capsys, "--model", "tiny-roberta", "--seq", "12", "--mode", "plain", "--attention", "rfa", "--json")
    result = json.loads(out)
    assert code == 0 and result["attention"]["kind"] == "rfa" and result["plain_wall_s"] > 0
    assert result["rfa_layers"] == [0, 1]  # random features serve every layer
    code, out, err = run(capsys, "--model", "tiny-roberta", "--seq", "12", "--attention", "rfa", "--features", "cosine")
    assert code == 2 and out == "" and "feature map" in err


def test_too_long_sequence_is_refused(capsys):
    code, _, err = run(capsys, "--model", "tiny-llama", "--seq", "4096", "--mode", "plain")
    assert code == 2 and "exceeds" in err


def test_plain_mode(capsys):
    code, out, _ = run(capsys, "--model", "tiny-roberta", "--seq", "12", "--batch", "2", "--mode", "plain", "--json")
    result = json.loads(out)
    assert code == 0 and result["ratio"] == 1.0 and result["wall_s"] == result["plain_wall_s"] > 0
    assert result["layers_run"] == result["layers_full"] == 2 and result["rfa_layers"] == []


@pytest.mark.mpc  # the benchmark's own local run: fresh parties
def test_secure_run_json_adds_up(capsys, tmp_path):
    target = tmp_path / "bench.json"
    code, out, _ = run(
        capsys, "--model", "tiny-llama", "--seq", "8", "--batch", "2", "--layers", "1", "--json", "--out", str(target),
        "--profile",
    )
    assert code == 0
    result = json.loads(out)
    assert json.loads(target.read_text()) == result
    assert result["layers_run"] == 1 and result["layers_full"] == 2 and result["fixed_weights"]
    assert result["rel_err"] <= 1e-2  # the secure scores match the plaintext forward
    assert result["ratio"] == pytest.approx(result["wall_s"] / result["plain_wall_s"], rel=0.02)
    comm, ops = result["comm"], result["ops"]
    assert set(comm) == {"owner", "server", "dealer"} and set(ops) == {"linear", "attention", "norm", "activation", "other"}
    for party in ("owner", "server"):
        online = comm[party]["online"]
        assert comm[party]["bytes"] == online["bytes"] + comm[party]["dealer_channel"]["bytes"]
    # only the owner receives from the dealer; the server sends it a 32-byte hash per request, no round
    server_dealer = comm["server"]["dealer_channel"]
    assert server_dealer["rounds"] == 0 and server_dealer["bytes"] > 0 and server_dealer["bytes"] % 32 == 0
    assert sum(op["bytes"] for op in ops.values()) == comm["owner"]["online"]["bytes"]
    assert sum(op["dealer_bytes"] for op in ops.values()) == comm["dealer"]["bytes"] > 0
    # the dealer's bytes as the owner counted them equal the dealer process's own count
    assert result["dealer_check"]["counted_by_owner"] == result["dealer_check"]["dealer_process"]
    # every wire: both parties' sends and the dealer's; a dealer on the link only adds time
    assert result["all_wires_bytes"] == sum(comm[p]["bytes"] for p in comm) > comm["dealer"]["bytes"]
    for link, online_s in result["links_s"].items():
        assert result["links_with_dealer_s"][link] > online_s
    # fixed weight masks: the linears open only their inputs o and down; q|k|v and gate|up read
    # norm outputs, which the norms open once for all their products (mpc.opened)
    a = result["arch"]
    rows = 2 * 8
    assert ops["linear"]["bytes"] == 8 * rows * (a["heads"] * a["head_dim"] + a["intermediate"])
    assert ops["linear"]["rounds"] == 2
    ext = result["extrapolation"]
    assert ext["layers"] == 2
    per, zero, total = ext["per_layer"], ext["outside_layers"], ext["total"]
    assert per["ops"]["linear"]["bytes"] == ops["linear"]["bytes"]  # no linear outside the layers (causal)
    for party in ("owner", "server", "dealer"):
        assert total["comm"][party]["bytes"] == pytest.approx(zero["comm"][party]["bytes"] + 2 * per["comm"][party]["bytes"])
    assert result["lan_s"] > 0 and result["wan_s"] > result["lan_s"]
    # --profile: each party's time split (mpc.profiling); the dealer's per request kind
    profile = result["profile"]
    for party in ("owner", "server", "dealer"):
        entries = profile[party]["by_own_time"]
        assert entries and all({"function", "calls", "own_s", "cum_s"} <= set(e) for e in entries)
        assert 0 <= profile[party]["waiting_s"] <= profile[party]["profiled_s"]
    assert any("forward" in e["function"] for e in profile["owner"]["by_cumulative_time"])
    assert "additive" in profile["dealer"]["requests"] and profile["dealer"]["requests"]["additive"]["requests"] > 0
