"""--precision float32: the secure run's approximations in float32, checked against the float64 oracle.

Tolerances are stated from measurements: every approximation in float32 is within ~3e-5 of
its float64 value relative (the limit exp's 8 squarings amplify rounding 256x, the most of
any), the rest within ~3e-7; whole models within ~1e-5 of the largest score.  The tests
allow about 10x that.
"""

import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import SERVER_CHOICE, TINY_MODELS, prepared_inputs
from mpc import approx, fourier
from mpc.trig import sincos_turns_plain
from rfa.config import SOFTMAX, AttentionConfig
from secptune.batch import population_inputs
from secptune.checkpoints import load_hf_model
from secptune.cli import main
from secptune.errors import InputError, SecptuneError
from secptune.oracle_check import OracleCheckedSession, OracleDivergenceError
from secptune.plain import PlainSession, plain_session
from secptune.scoring import score_batches
from secptune.server.prepare import prepare_server_model
from secptune.tune import TuneConfig, losses
from secptune.tune_job import run_tune

MODEL_RTOL = 1e-4  # max |s32 − s64| / max |s64| over a forward; measured ≤ 7e-6
CFG = approx.ApproxConfig()


def _both(f, x64: torch.Tensor):
    """f on the same values in float64 and in float32 (inputs rounded to float32 first, so
    only the function's own float32 arithmetic differs)."""
    x32 = x64.float()
    ref, got = f(x32.double()), f(x32)
    assert got.dtype == torch.float32, "a float64 constant promoted the float32 computation"
    return ref, got.double()


def _rel(ref, got, floor: float = 0.0):
    return float(((got - ref).abs() / ref.abs().clamp(min=floor)).max())


def _mean_squares(width: int, count: int = 300) -> torch.Tensor:
    """Rows [count, width] whose mean squares span the norm's whole range, 1e-5 .. its ceiling."""
    ms = torch.logspace(-5, math.log10(approx.norm_ceiling(CFG, width)), count, dtype=torch.float64)
    x = torch.randn(count, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x / x.square().mean(-1, keepdim=True).sqrt() * ms.sqrt().unsqueeze(-1)


# (name, function, inputs covering its stated range, relative tolerance, floor of the denominator)
APPROXIMATIONS = [
    ("limit exp on [-60, 4]", lambda t: approx.exp(t, CFG.exp_iters), torch.linspace(-60, 4, 20001, dtype=torch.float64), 3e-4, 0.0),
    ("RFA exp, Fourier", lambda t: approx.feature_exp(t, CFG), torch.linspace(CFG.rfa_exp_low, CFG.rfa_exp_high, 20001, dtype=torch.float64), 1e-5, 0.0),
    ("RFA exp, limit", lambda t: approx.feature_exp(t, approx.ApproxConfig(rfa_exp="limit")), torch.linspace(-64, 4, 20001, dtype=torch.float64), 3e-4, 0.0),
    ("reciprocal on [1, 64]", lambda t: approx.reciprocal(t, 1.0, 64.0), torch.logspace(0, math.log10(64), 5001, dtype=torch.float64), 1e-6, 0.0),
    ("divide_wide over the RFA denominator range", lambda t: approx.divide_wide(t * 0 + 3.0, t, *CFG.rfa_den_range),
     torch.logspace(-3, 6, 5001, dtype=torch.float64).unsqueeze(-1), 1e-6, 0.0),
    ("sigmoid", lambda t: approx.sigmoid(t, CFG), torch.linspace(-60, 60, 20001, dtype=torch.float64), 1e-4, 1.0),
    ("SiLU, Fourier, bound 10", lambda t: approx.activation(t, "silu", 10.0, CFG), torch.linspace(-10, 10, 20001, dtype=torch.float64), 1e-5, 10.0),
    ("GeLU (tanh), Fourier, bound 30", lambda t: approx.activation(t, "gelu_new", 30.0, CFG), torch.linspace(-30, 30, 20001, dtype=torch.float64), 1e-5, 30.0),
    ("SiLU series outside its range", fourier.activation_series("silu", 20.0).series, torch.linspace(-30, 30, 20001, dtype=torch.float64), 1e-5, 20.0),
    ("RMSNorm over the whole mean-square range", lambda t: approx.normalize(t, 1e-5, CFG), _mean_squares(576), 1e-5, 0.0),
    ("rsqrt_wide over the norm range", lambda t: approx.rsqrt_wide(t, *CFG.norm_range),
     torch.logspace(-5, 8, 2001, dtype=torch.float64).unsqueeze(-1), 1e-5, 0.0),
    ("sin of 300 turns", lambda t: sincos_turns_plain(t)[0], torch.linspace(-300, 300, 20001, dtype=torch.float64), 1e-5, 1.0),
]


@pytest.mark.parametrize("name,f,x,rtol,floor", APPROXIMATIONS, ids=[a[0] for a in APPROXIMATIONS])
def test_approximation_in_float32_is_its_float64_value(name, f, x, rtol, floor):
    ref, got = _both(f, x)
    assert _rel(ref, got, floor) <= rtol


def test_softmax_in_float32():
    scores = torch.randn(16, 4, 40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 8
    penalty = torch.triu(torch.ones(40, 40, dtype=torch.float64), 1)
    ref, got = _both(lambda t: approx.softmax(t, penalty.to(t.dtype), CFG), scores)
    assert float((got - ref).abs().max()) <= 1e-4


def test_norm_scales_of_large_rows_survive_float32():
    """The regression behind combining power-of-two scales in float64: in float32 the
    telescoping sum gave s² = 0 for mean squares above ~10^3, i.e. a norm output of 0."""
    rows = torch.tensor([[1e3], [1e5], [1e7]], dtype=torch.float32)
    _, s2 = approx.power_of_two_scale(rows, *CFG.norm_range)
    reduced = rows * s2
    assert bool(((reduced >= 1) & (reduced < 16)).all()), reduced


def _session_pair(model: str, attention: AttentionConfig):
    opts, prep = prepared_inputs(model, prompt_len=3, batch_size=4)
    server = prepare_server_model(load_hf_model(prep.model_dir), attention)
    make = lambda dtype: PlainSession(prep.model_dir, prep.verbalizer, False, CFG, attention, dtype=dtype, server=server)  # noqa: E731
    return prep, make(torch.float32), make(torch.float64)


def _prompts(batch, count: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, batch.prompt.shape[1], batch.prompt.shape[-1], generator=g, dtype=torch.float64) * 0.5


ATTENTIONS = {
    "softmax": SOFTMAX,
    "rfa-positive": AttentionConfig(kind="rfa", features="positive", num_features=16),
    "rfa-server-choice": SERVER_CHOICE,
}


# the server's choice of fitted RFA layers on tiny-llama only: conftest.SERVER_CHOICE makes it a hybrid there
CASES = [(m, a) for m in TINY_MODELS for a in ATTENTIONS if a != "rfa-server-choice" or m == "tiny-llama"]


@pytest.mark.parametrize("tiny_model,attention", CASES, ids=[f"{m}-{a}" for m, a in CASES])
def test_float32_session_gives_the_oracle_scores(tiny_model, attention):
    prep, fast, oracle = _session_pair(tiny_model, ATTENTIONS[attention])
    batch = prep.batches[0]
    got = fast.scores(fast.load_texts(batch), _prompts(batch))
    ref = oracle.scores(oracle.load_texts(batch), _prompts(batch))
    assert ref.std() > 1e-2  # the scores are not degenerate
    assert float((got - ref).abs().max()) <= MODEL_RTOL * float(ref.abs().max())
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert fast.range_warnings == oracle.range_warnings
    # the whole forward ran in float32: a float64 constant anywhere would have promoted it
    embeds, inputs = fast.texts[0][0], fast.texts[0][1]
    e, b = population_inputs(embeds, inputs, _prompts(batch).float())
    assert fast.model.forward(e, b, fast.head).dtype == torch.float32


def test_predictions_on_the_test_sentences_are_the_oracles(tiny_model):
    opts, prep = prepared_inputs(tiny_model, prompt_len=4, batch_size=2)
    fast = plain_session(prep.model_dir, prep.verbalizer, CFG, precision="float32")
    oracle = plain_session(prep.model_dir, prep.verbalizer, CFG)
    got, ref = score_batches(fast, prep.batches), score_batches(oracle, prep.batches)
    assert got.argmax(-1).tolist() == ref.argmax(-1).tolist()
    assert float((got - ref).abs().max()) <= MODEL_RTOL * float(ref.abs().max())


class _Scaled:
    """A float32 session whose scores are off by a factor: what a precision bug looks like."""

    def __init__(self, session, factor: float):
        self.session, self.factor = session, factor
        self.forward_log = session.forward_log
        self.range_warnings = session.range_warnings

    def load_texts(self, batch):
        return self.session.load_texts(batch)

    def scores(self, text_id, prompts):
        return self.session.scores(text_id, prompts) * self.factor


def _checked(factor: float, fail: bool = True, every: int = 1):
    prep, fast, oracle = _session_pair("tiny-llama", SOFTMAX)
    session = OracleCheckedSession(_Scaled(fast, factor) if factor != 1 else fast, oracle, every=every, fail=fail)
    batch = prep.batches[0]
    text_id = session.load_texts(batch)
    labels = torch.tensor([ex.label for ex in prep.examples[: batch.prompt.shape[0]]])
    session.set_loss(text_id, lambda s: losses(s.view(-1, len(labels), s.shape[-1]), labels, "ce"))
    return session, text_id, batch


def test_oracle_check_passes_an_honest_float32_session():
    session, text_id, batch = _checked(1.0)
    session.scores(text_id, _prompts(batch))
    check = session.forward_log[-1]["oracle"]
    assert check["within_bounds"] and check["agreement"] == 1.0
    assert check["max_rel_loss_diff"] <= 1e-4 and check["candidates"] == 3
    summary = session.summary()
    assert summary["checked"] == 1 and summary["within_bounds"] and summary["oracle_wall_s"] > 0


def test_oracle_check_stops_a_diverging_session():
    """Positive control: scores 1 % off break both bounds (1e-3), and the run stops, saying why."""
    session, text_id, batch = _checked(1.01)
    with pytest.raises(OracleDivergenceError, match=r"diverged from the float64 oracle on call 1 .*relative score "
                                                    r"difference .* > 0.001.*--precision float64"):
        session.scores(text_id, _prompts(batch))


def test_oracle_check_records_without_stopping_when_asked():
    session, text_id, batch = _checked(1.01, fail=False)
    session.scores(text_id, _prompts(batch))
    check = session.checks[-1]
    assert not check["within_bounds"] and check["rel_score_diff"] > 5e-3 and check["max_rel_loss_diff"] > 1e-3
    assert session.summary()["within_bounds"] is False


def test_oracle_check_fails_on_nan():
    session, text_id, batch = _checked(math.nan)
    with pytest.raises(OracleDivergenceError):
        session.scores(text_id, _prompts(batch))


def test_every_kth_call_is_counted_per_text_set():
    session, text_id, batch = _checked(1.0, every=2)
    other = session.load_texts(batch)
    for tid in (text_id, other, text_id, text_id, other):
        session.scores(tid, _prompts(batch, 1))
    checked = [(c["call"], c["texts"]) for c in session.checks]
    assert checked == [(1, text_id), (2, other), (4, text_id)]


def test_flags_are_refused_where_they_mean_nothing():
    opts, prep = prepared_inputs("tiny-llama")
    with pytest.raises(InputError, match="add --precision float32"):
        plain_session(prep.model_dir, prep.verbalizer, CFG, check_oracle=1)
    with pytest.raises(InputError, match="--precision must be one of float64, float32"):
        plain_session(prep.model_dir, prep.verbalizer, CFG, precision="float16")


@pytest.mark.parametrize("flags,message", [
    (["--mode", "secure", "--precision", "float32"], "for --mode plain only"),
    (["--exact", "--precision", "float32"], "for the approximations only"),
    (["--check-oracle"], "add --precision float32"),
])
def test_cli_refusals(capsys, flags, message):
    assert main(["infer", "--task", "sst2", "--model", "tiny-llama", "--limit", "2", *flags]) == 2
    assert message in capsys.readouterr().err


def test_infer_json_records_precision_and_the_check(capsys):
    assert main(["infer", "--task", "sst2", "--model", "tiny-llama", "--limit", "4", "--precision", "float32",
                 "--check-oracle", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["precision"] == "float32"
    check = out["oracle_check"]
    assert check["checked"] == check["calls"] == 1 and check["agreement"] == 1.0
    assert check["max_rel_loss_diff"] <= 1e-4  # the SST-2 test sentences are labelled: losses compared too


def test_tune_report_records_precision_and_the_check(tmp_path):
    cfg = TuneConfig(task="sst2", model="tiny-llama", mode="plain", precision="float32", check_oracle=2, k=2, popsize=4,
                     budget=12, prompt_len=2, intrinsic_dim=10, test_limit=4)
    out = run_tune(cfg, str(tmp_path / "run"), show_progress=False)
    check = out["final"]["oracle_check"]
    assert out["config"]["precision"] == "float32" and check["every"] == 2 and check["within_bounds"]
    assert check["loss_checked_calls"] == 2  # generations 1 and 3 of 3 (every 2nd training call)
    assert "approximations in float32" in (tmp_path / "run" / "report.md").read_text()
    assert "Checked against the float64 oracle" in (tmp_path / "run" / "report.md").read_text()
    # --resume may change how often the check runs, not the precision (it changes the search)
    run_tune(replace(cfg, check_oracle=1, budget=16), str(tmp_path / "run"), resume=True, show_progress=False)
    with pytest.raises(SecptuneError, match="different settings \\(precision"):
        run_tune(replace(cfg, precision="float64", check_oracle=0, budget=20), str(tmp_path / "run"), resume=True,
                 show_progress=False)
