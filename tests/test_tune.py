"""Tuning: secure and plain agree generation by generation; a killed run resumes exactly."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from secptune.errors import InputError
from secptune.report import compare
from secptune.hf_session import HFSession
from secptune.tune import TuneConfig, losses, metric, score_on_test, tune_program
from secptune.tune_job import build_texts, run_tune

POS = ["a great film", "good acting and a fine story", "great music", "a good and positive day", "fine and great"]
NEG = ["a bad film", "terrible acting and a slow story", "bad music", "a terrible and negative day", "slow and bad"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = [{"text": t, "label": 1} for t in POS] + [{"text": t, "label": 0} for t in NEG]
    for name in ("train", "test"):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def small_config(model, mode, data, **kw):
    settings = dict(k=2, popsize=4, budget=8, prompt_len=4, intrinsic_dim=10, test_limit=4, batch_size=4, seed=7)
    return TuneConfig(
        task="sst2", model=model, mode=mode, train=str(data / "train.jsonl"), test=str(data / "test.jsonl"),
        **{**settings, **kw},
    )


def test_losses_and_metrics():
    scores = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [2.0, 0.0]]])
    labels = torch.tensor([0, 1])
    ce = losses(scores, labels, "ce")
    assert ce[0] < ce[1]
    hinge = losses(scores, labels, "hinge")
    assert hinge[0] == 0 and hinge[1] == 3.0
    assert metric([1, 1, 0], [1, 0, 0], "f1") == pytest.approx(2 / 3)


@pytest.mark.mpc  # the product's own local run: fresh parties
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-roberta"])
def test_secure_and_plain_tuning_agree(model, data, tmp_path):
    plain = run_tune(small_config(model, "plain", data), str(tmp_path / "plain"), show_progress=False)
    secure = run_tune(small_config(model, "secure", data), str(tmp_path / "secure"), show_progress=False)
    assert len(plain["generations"]) == len(secure["generations"]) == 2
    # no --attention: both ran the default, RFA in the layers the server chose (the tiny models' choice under
    # the default's budget may keep softmax everywhere; test_layer_choice runs a hybrid secure), none voided
    assert secure["final"]["attention"]["kind"] == plain["final"]["attention"]["kind"] == "rfa"
    assert secure["final"]["attention"]["auto_kl"] is None and secure["final"]["invalid_generations"] == 0
    for p, s in zip(plain["generations"], secure["generations"]):
        for key in ("best_loss", "mean_loss"):
            assert abs(p[key] - s[key]) <= 1e-2 * max(1.0, abs(p[key])), (key, p, s)
    assert secure["totals"]["parties"]["owner"]["bytes"] > 0
    assert secure["per_call"]["bytes"] > 0 and plain["per_call"]["bytes"] == 0
    pc = secure["per_call"]  # every wire counted: online, and what the dealer sent both parties per call
    assert 0 < pc["online_bytes"] < pc["bytes"] and pc["online_rounds"] > 0
    assert pc["dealer_bytes"] == pc["dealer_to_owner_bytes"] + pc["dealer_to_server_bytes"]
    # the dealer answers the owner; the server expands its shares from its key with the dealer
    assert pc["dealer_to_owner_bytes"] > 0 and pc["dealer_to_server_bytes"] == 0
    # the dealer's whole traffic (set-up, test forwards too) covers its per-call share of the training calls
    assert secure["totals"]["parties"]["dealer"]["bytes"] >= pc["dealer_bytes"] * pc["calls"]
    assert "online_bytes" not in plain["per_call"]
    for name in ("report.json", "report.md", "curves.png", "prompt.pt"):
        assert (tmp_path / "secure" / name).is_file()
    table = compare([str(tmp_path / "secure"), str(tmp_path / "plain")]).splitlines()
    assert len(table) == 4 and table[2].startswith("| secure | sst2 | secure | 8 |") and "| plain | 8 |" in table[3]
    assert table[2].endswith(f"| {pc['online_bytes'] / 1e6:.2f} | {pc['dealer_bytes'] / 1e6:.2f} |")


def test_attention_has_one_default_where_the_approximations_run_and_softmax_elsewhere():
    from secptune.errors import InputError
    from secptune.infer import DEFAULT_ATTENTION, attention_for

    assert attention_for("secure", False, None) == attention_for("plain", False, None) == DEFAULT_ATTENTION
    assert attention_for("plain", True, None) == attention_for("privtune", False, None) == "softmax"
    assert attention_for("secure", False, "rfa") == "rfa"  # a flag given always wins
    with pytest.raises(InputError, match="--exact runs the model's own softmax"):
        attention_for("plain", True, "rfa")


def test_exact_plain_tuning_runs_the_unmodified_model(data, tmp_path):
    """--exact: transformers' float32 model; its losses differ from the oracle's only by the approximations."""
    oracle = run_tune(small_config("tiny-llama", "plain", data), str(tmp_path / "oracle"), show_progress=False)
    exact = run_tune(small_config("tiny-llama", "plain", data, exact=True), str(tmp_path / "exact"), show_progress=False)
    assert exact["config"]["exact"] and "(exact)" in compare([str(tmp_path / "exact")])
    for o, e in zip(oracle["generations"], exact["generations"]):
        assert o["best_loss"] != e["best_loss"]  # really another model ...
        assert abs(o["best_loss"] - e["best_loss"]) <= 2e-2 * max(1.0, abs(o["best_loss"]))  # ... of the same function
    with pytest.raises(InputError, match="--mode plain only"):
        run_tune(small_config("tiny-llama", "secure", data, exact=True), str(tmp_path / "no"), show_progress=False)


def test_a_tuned_prompt_scores_the_same_on_another_session_and_a_known_zero_shot_is_skipped(data, tmp_path):
    """rfa_fidelity's after-tuning check scores a prompt on a session it was not tuned on, and skips
    zero-shot passes whose scores it has already (an AG News RFA pass is ~10 minutes)."""
    cfg = small_config("tiny-llama", "plain", data, exact=True, test_limit=10)
    run = run_tune(cfg, str(tmp_path / "run"), show_progress=False)
    model_dir, texts, loss = build_texts(cfg)
    prompt = torch.load(tmp_path / "run" / "prompt.pt", weights_only=True)
    assert score_on_test(HFSession(model_dir, texts.verbalizer), texts, prompt) == run["final"]["test"]["tuned"]
    again = tune_program(HFSession(model_dir, texts.verbalizer), replace(cfg, loss=loss), replace(texts, test_zero=None),
                         str(tmp_path / "again"), False, False)  # fmt: skip
    assert again["final"]["test"] == {"zero_shot": None, "tuned": run["final"]["test"]["tuned"]}
    assert torch.equal(again["prompt"], prompt)


def _without_wall(generations: list[dict]) -> list[dict]:
    """Generation records minus their timings: what two runs of one search must share."""
    return [{k: v for k, v in g.items() if k != "wall_s"} for g in generations]


def _cli(args, **kw):
    cmd = [sys.executable, "-m", "secptune.cli", "tune", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.deploy  # three CLI processes, one of them killed
def test_killed_run_resumes_to_the_same_result(data, tmp_path):
    args = ["--model", "tiny-llama", "--mode", "plain", "--train", str(data / "train.jsonl"),
            "--test", str(data / "test.jsonl"), "--k", "2", "--popsize", "4", "--budget", "400",
            "--prompt-len", "4", "--intrinsic-dim", "10", "--test-limit", "4", "--seed", "3", "--quiet"]
    whole = _cli(args + ["--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=600) == 0, whole.stderr.read().decode()[-2000:]

    killed = _cli(args + ["--out", str(tmp_path / "killed")])
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["gen"] >= 3:
            break
        time.sleep(0.02)  # 100 generations: the kill lands long before the run could end
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (tmp_path / "killed" / "report.json").exists()  # it really was interrupted

    resumed = _cli(args + ["--out", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert _without_wall(a["generations"]) == _without_wall(b["generations"])
    assert a["final"] == b["final"]


def test_resume_refuses_a_different_run(data, tmp_path):
    out = tmp_path / "run"
    run_tune(small_config("tiny-llama", "plain", data), str(out), show_progress=False)
    from secptune.errors import SecptuneError

    with pytest.raises(SecptuneError, match=r"different settings \(alpha\)"):
        run_tune(small_config("tiny-llama", "plain", data, alpha=0.5), str(out), resume=True, show_progress=False)


def test_resume_with_a_larger_budget_extends_the_run(data, tmp_path):
    """--resume --budget N goes on searching: the same generations as a run given N from the start."""
    whole = run_tune(small_config("tiny-llama", "plain", data, budget=12), str(tmp_path / "whole"), show_progress=False)
    short = run_tune(small_config("tiny-llama", "plain", data, budget=4), str(tmp_path / "grown"), show_progress=False)
    grown = run_tune(small_config("tiny-llama", "plain", data, budget=12), str(tmp_path / "grown"), resume=True,
                     show_progress=False)
    assert len(short["generations"]) == 1 and len(grown["generations"]) == 3
    assert _without_wall(grown["generations"]) == _without_wall(whole["generations"])
    assert grown["final"] == whole["final"] and grown["config"]["budget"] == 12
    assert grown["per_call"]["calls"] == 12  # every generation's forward, not only this process's


def test_time_limit_stops_with_a_tested_prompt_and_resume_finishes_the_run(data, tmp_path):
    """--time-limit ends tuning after the generation that crosses it (here: the first), tests the
    best prompt so far and says why it stopped; --resume without the limit reaches the whole run."""
    whole = run_tune(small_config("tiny-llama", "plain", data, budget=12), str(tmp_path / "whole"), show_progress=False)
    out = str(tmp_path / "limited")
    cut = run_tune(small_config("tiny-llama", "plain", data, budget=12, time_limit=0.0), out, show_progress=False)
    assert len(cut["generations"]) == 1 and cut["final"]["generations_run"] == 1
    assert cut["final"]["stopped"].startswith("time limit (0 min) after 1 of 3 generations")
    assert "Stopped early: time limit" in (tmp_path / "limited" / "report.md").read_text()
    done = run_tune(small_config("tiny-llama", "plain", data, budget=12), out, resume=True, show_progress=False)
    assert _without_wall(done["generations"]) == _without_wall(whole["generations"])
    assert done["final"] == whole["final"] and done["final"]["stopped"] is None


def test_best_prompt_breaks_dev_ties_by_training_loss():
    from secptune.tune import _better

    best = {"dev": 0.5, "loss": 0.9}
    assert _better(0.6, 2.0, best) and not _better(0.4, 0.1, best)
    assert _better(0.5, 0.8, best) and not _better(0.5, 0.95, best)
    assert _better(0.5, 0.8, {"dev": 0.5})  # checkpoints written before the loss was kept


def test_a_checkpoint_from_before_a_new_option_still_matches_its_default():
    from dataclasses import asdict

    from secptune.tune import TuneConfig, _saved_setting

    old = asdict(TuneConfig())
    del old["pad_bucket"]  # options added after the run was checkpointed
    del old["cfg"]["range_samples"]
    assert _saved_setting(old, "pad_bucket") == 0 and _saved_setting(old, "cfg") == asdict(TuneConfig())["cfg"]
    old["cfg"]["range_samples"] = 7  # a setting the run really had still counts
    assert _saved_setting(old, "cfg") != asdict(TuneConfig())["cfg"]
