"""Range checks under MPC: a sampled check reveals one bit per forward to the data owner.

Each ranged approximation call of the secure forward keeps ``range_samples`` (default 256)
of its inputs at public random positions; one batched comparison tests them against their
public bounds and only "some sampled input is out of range" is revealed, to the owner
(docs/protocol.md, "Range checks under MPC").
"""

import dataclasses

import torch

from secptune import owner, secure
from secptune.errors import RangeCheckError
from secptune.infer import plain_scores, secure_scores

from conftest import prepared_inputs

TOLERANCE = 1e-2  # as tests/test_secure.py: max |secure − plain| ≤ 1e-2 · max |plain|


def test_in_range_forward_reveals_bit_zero_and_matches_the_oracle(mpc_cluster):
    opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    plain, warnings = plain_scores(prep, exact=False, cfg=opts.cfg)
    assert warnings == {}  # the oracle sees every input in range
    got, _, results = secure_scores(prep, opts.cfg, launch=mpc_cluster.run)
    assert float((got - plain).abs().max() / plain.abs().max()) <= TOLERANCE
    forwards = results["owner"].value["forwards"]
    events = owner.range_events(forwards)
    assert events == {"forwards": 2, "out_of_range": 0, "calls": [], "wild_retries": 0}
    for entry in forwards:  # the check ran on every ranged call: norms, softmax logits, activations
        assert {"rms_norm_mean_square", "attention_logit", "activation_input"} <= set(entry["range_checked"])
        assert entry["range_event"] is False
    # per forward: the scores and the one range bit, both to the owner, nothing else
    for role in ("owner", "server"):
        assert results[role].reveals == [(0, (2, 3)), (0, (1,))] * 2
    assert all("range_event" not in entry for entry in results["server"].value["forwards"])


def owner_out_of_range(session, batches):
    """Owner program: one forward under the "report" policy, then one under "stop"."""
    session.range_policy = "report"
    text_id = session.load_texts(batches[0])
    scores = session.scores(text_id, batches[0].prompt[:1])
    reported = dict(session.forward_log[-1])
    session.range_policy = "stop"
    try:
        session.scores(text_id, batches[0].prompt[:1])
    except RangeCheckError as error:
        return {"scores": scores, "reported": reported, "error": str(error)}
    return {"scores": scores, "reported": reported, "error": None}


def test_out_of_range_inputs_are_reported_or_stop_the_run(mpc_cluster):
    """Positive control: attention logits announced to lie in [−0.01, 0.01].

    The bound only enters the range check (the softmax itself does not depend on it), so
    the scores are unchanged and the plain oracle counts the violations.  Nearly every
    logit is outside (the fraction f is measured below, f > 0.9), so each softmax call's
    256 samples miss them all with probability (1 − f)^256 < 10^-256: the bit must be 1.
    """
    opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    cfg = dataclasses.replace(opts.cfg, logit_bound=0.01)
    plain, warnings = plain_scores(prep, exact=False, cfg=cfg)
    _, everything = plain_scores(prep, exact=False, cfg=dataclasses.replace(opts.cfg, logit_bound=-1.0))
    fraction = warnings["attention_logit"] / everything["attention_logit"]
    assert fraction > 0.9
    assert set(warnings) == {"attention_logit"}

    request = secure.OwnerRequest(labels=len(prep.label_ids), cfg=dataclasses.asdict(cfg))
    results = owner.run_local(
        str(prep.model_dir), owner_out_of_range, (prep.batches[:1],), request, prep.verbalizer, launch=mpc_cluster.run
    )
    value = results["owner"].value["result"]
    assert value["reported"]["range_event"] is True  # "report": the owner is told, the scores come back
    assert float((value["scores"] - plain[:2]).abs().max() / plain[:2].abs().max()) <= TOLERANCE
    assert value["error"] is not None  # "stop": a clear error on the owner's side
    assert "outside an approximation's range" in value["error"] and "--mode plain" in value["error"]
    assert "attention_logit" in value["error"]
    # the server saw two ordinary forward commands and no verdict; it cannot tell the bit
    assert len(results["server"].value["forwards"]) == 2
    assert all("range_event" not in entry for entry in results["server"].value["forwards"])
    assert owner.range_events(results["owner"].value["forwards"])["out_of_range"] == 2


class _FakeSession:
    """Owner-side stand-in for a secure session whose range bit fires on chosen train forwards."""

    embedding_std = 0.02

    def __init__(self, fire_on: set[int]):
        self.fire_on, self.forward_log, self.range_policy, self.train_calls = fire_on, [], "stop", 0
        self.sizes: list[int] = []

    def load_texts(self, batch):
        self.sizes.append(int(batch))
        return len(self.sizes) - 1

    def scores(self, text_id, prompts):
        rows = prompts.shape[0] * self.sizes[text_id]
        event = False
        if text_id == 0:  # the training texts: one forward per generation
            self.train_calls += 1
            event = self.train_calls in self.fire_on
        self.forward_log.append({"wall_s": 0.0, "bytes": 0, "rounds": 0, "range_event": event})
        return torch.randn(rows, 2, dtype=torch.float64)

    def traffic(self):
        return 0, 0


def test_tune_discards_a_generation_whose_range_check_fired(tmp_path):
    """Owner side only (no MPC): the generation's losses are invalid, counted in the report."""
    from secptune.tune import TextSets, TuneConfig, tune_program

    cfg = TuneConfig(mode="secure", prompt_len=1, intrinsic_dim=4, popsize=4, budget=12, k=2)
    texts = TextSets(
        train=4, train_labels=[0, 1, 0, 1], dev=[2], dev_labels=[0, 1], test=[2], test_labels=[0, 1],
        dev_zero=[2], test_zero=None, verbalizer=torch.eye(2), hidden=3, metric="accuracy",
    )
    session = _FakeSession(fire_on={2})
    result = tune_program(session, cfg, texts, str(tmp_path), resume=False, show_progress=False)
    assert session.range_policy == "report"
    history = result["history"]
    assert [g.get("range_event", False) for g in history] == [False, True, False]
    assert "dev_accuracy" not in history[1]  # never a best-prompt candidate
    assert result["final"]["range_events"] == 1 and result["final"]["invalid_generations"] == 1
    assert result["final"]["best_generation"] != 2


def test_infer_names_the_examples_of_the_flagged_batches():
    """result.json says which predictions the range check put in doubt: batch i's examples, the last
    batch cut at the number of examples; none when nothing fired."""
    from secptune.infer import flagged_examples

    assert flagged_examples([3], 8, 100) == list(range(24, 32))
    assert flagged_examples([0, 12], 8, 100) == [*range(8), 96, 97, 98, 99]
    assert flagged_examples([], 8, 100) == []
