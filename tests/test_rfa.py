"""Random-feature attention: estimator, evaluation orders, and secure == plaintext RFA.

Secure tolerance as everywhere: max |secure − plain| <= 1e-2 · max |plain score|.
"""

import dataclasses
import math

import pytest
import torch

from mpc import approx
from rfa.config import AttentionConfig
from rfa.random_features import (
    feature_matrix,
    linear_form,
    prefix_form,
    quadratic_form,
    rfa_attention,
    server_feature_matrices,
)
from rfa.softmax_attention import attention
from secptune.infer import plain_scores, secure_scores
from secptune.transformer import causal_penalty

from conftest import SERVER_CHOICE, prepared_inputs

ACFG = approx.ApproxConfig()


def _params(cfg, d, heads=1):
    w = server_feature_matrices(cfg, 1, d, heads)
    return {"q": w["l0.rfa.q"], "k": w["l0.rfa.k"]}


def test_orthogonal_blocks_and_fixed_seed():
    w = feature_matrix(16, 40, seed=3)
    assert w.shape == (16, 40)
    block = w[:, :16] / w[:, :16].norm(dim=0)
    assert torch.allclose(block.T @ block, torch.eye(16, dtype=torch.float64), atol=1e-10)
    assert torch.equal(w, feature_matrix(16, 40, seed=3)) and not torch.equal(w, feature_matrix(16, 40, seed=4))


@pytest.mark.parametrize("features", ["positive", "fourier"])
def test_estimator_approaches_softmax_with_more_features(features):
    torch.manual_seed(0)
    d, n = 16, 12
    q = torch.randn(1, 1, n, d, dtype=torch.float64) * 0.3 / math.sqrt(d)
    k = torch.randn(1, 1, n, d, dtype=torch.float64) * 0.3
    v = torch.randn(1, 1, n, d, dtype=torch.float64)
    exact = attention(q, k, v, None, exact=True, cfg=ACFG)
    errors = []
    for r in (16, 4096):
        cfg = AttentionConfig(features=features, num_features=r)
        out = rfa_attention(q, k, v, _params(cfg, d), None, cfg, ACFG)
        errors.append(float((out - exact).norm() / exact.norm()))
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3


def test_prefix_sums_equal_masked_quadratic_form_with_groups_and_prefix():
    torch.manual_seed(1)
    b, kvh, rep, n, offset, r, d = 2, 3, 2, 5, 1, 8, 4
    fq = torch.rand(b, kvh, rep * n, r, dtype=torch.float64)
    fk = torch.rand(b, kvh, offset + n, r, dtype=torch.float64)
    v = torch.randn(b, kvh, offset + n, d, dtype=torch.float64)
    penalty = torch.cat([torch.zeros(rep * n, offset, dtype=torch.float64), causal_penalty(n, rep)], dim=1)
    num_q, den_q = quadratic_form(fq, fk, v, 1 - penalty)
    num_p, den_p = prefix_form(fq, fk, v, rep, offset)
    assert torch.allclose(num_q, num_p) and torch.allclose(den_q, den_p)


def test_linear_form_equals_quadratic_form_with_padding():
    torch.manual_seed(2)
    b, h, n, r, d = 2, 3, 7, 5, 4
    fq, fk = torch.rand(b, h, n, r, dtype=torch.float64), torch.rand(b, h, n, r, dtype=torch.float64)
    v = torch.randn(b, h, n, d, dtype=torch.float64)
    padding = torch.zeros(b, 1, 1, n, dtype=torch.float64)
    padding[0, ..., -2:] = 1  # the first sequence's last two keys are padding
    num_q, den_q = quadratic_form(fq, fk, v, 1 - padding)
    num_l, den_l = linear_form(fq, fk, v, (1 - padding).transpose(-2, -1))
    assert torch.allclose(num_q, num_l) and torch.allclose(den_q, den_l)


def test_range_monitor_flags_out_of_range_attention():
    cfg = AttentionConfig(num_features=8)
    q = torch.full((1, 1, 2, 4), 3.0, dtype=torch.float64)
    monitor = approx.RangeMonitor()
    rfa_attention(q * 2, q * 8, q, _params(cfg, 4), None, cfg, ACFG, monitor)
    assert monitor.violations.get("rfa_exp_argument", 0) > 0  # -|x|^2/2 is far below the Fourier exp's range
    monitor = approx.RangeMonitor()
    rfa_attention(q, q * 4, q, _params(cfg, 4), None, cfg, dataclasses.replace(ACFG, rfa_exp="limit"), monitor)
    assert monitor.violations.get("rfa_denominator", 0) > 0  # the limit exp underflows: denominators too small
    monitor = approx.RangeMonitor()
    fitted = AttentionConfig(features="fitted", num_features=8)
    for bias, flagged in ((9.0, False), (ACFG.rfa_exp_reach + 2, True)):  # saturated, then past the reach
        monitor = approx.RangeMonitor()
        params = {**_params(cfg, 4), "bq": torch.full((1, 1, 8), bias, dtype=torch.float64)}
        rfa_attention(q * 0.1, q * 0.1, q, params, None, fitted, ACFG, monitor)
        assert (monitor.violations.get("rfa_exp_argument", 0) > 0) == flagged


def test_feature_exp_is_exp_below_its_knee_and_saturates_up_to_its_reach():
    """Outside its range the periodic series wraps round to wrong features.  Task text drives
    fitted-map arguments far below anything the fit saw (SmolLM2 on AG News: to −40), so the
    range reaches down to where exp is 0 in 16-bit fixed point anyway; a random prompt drives
    some above it (SmolLM2 on SST-2: to 14.3, reports/prepare/rfa_range.json), so above the
    knee the feature levels off at e^knee up to the reach instead of wrapping round."""
    from mpc.fourier import exp_series

    series = approx.feature_exp_series(ACFG)
    knee, top = ACFG.rfa_exp_high, math.exp(ACFG.rfa_exp_high)
    a = torch.linspace(ACFG.rfa_exp_low, ACFG.rfa_exp_reach, 80001, dtype=torch.float64)
    got = series.series(a / 2).square()
    assert ((got - a.exp() / (1 + (a - knee).exp())).abs() / top).max() < 1e-3
    below = a <= knee - 3
    assert ((got[below] - a[below].exp()).abs() / top).max() < 1e-3 + 0.05 * math.exp(knee - 3) / top
    assert (got[a >= knee + 3] > 0.9 * top).all()  # saturated, up to the reach
    assert ACFG.rfa_exp_low <= -48 and ACFG.rfa_exp_reach >= 16
    # what the plain exp series on [low, knee] did past its top: at 10, neither exp nor bounded
    at10 = exp_series(ACFG.rfa_exp_low / 2, knee / 2).series(torch.tensor(10.0 / 2)).square()
    assert at10 < 0.1 * math.exp(10) and at10 > 10 * top
    # and a narrow low end: [-16, 4] maps -25 onto nearly e^4
    narrow = exp_series(-8.0, 2.0).series(torch.tensor(-25.0 / 2)).square()
    assert narrow > 10 and series.series(torch.tensor(-25.0 / 2)).square() < 1e-3


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="feature map"):
        AttentionConfig(features="cosine")
    with pytest.raises(ValueError, match="attention must be"):
        AttentionConfig(kind="linear")


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "model,cfg",
    [
        ("tiny-llama", AttentionConfig(features="positive", num_features=16)),
        ("tiny-roberta", AttentionConfig(features="positive", num_features=16)),
        ("tiny-llama", AttentionConfig(features="fourier", num_features=16, scale=0.25)),
        ("tiny-llama", AttentionConfig(features="fitted", num_features=8, softmax_layers=(1,))),
        ("tiny-llama", SERVER_CHOICE),  # the server chooses the layers; the owner runs its choice
    ],
    ids=["llama-positive", "roberta-positive", "llama-fourier", "llama-fitted-hybrid", "llama-default"],
)
def test_secure_rfa_equals_plain_rfa(model, cfg, mpc_cluster):
    opts, prep = prepared_inputs(model, prompt_len=4, batch_size=2)
    plain, warnings = plain_scores(prep, exact=False, cfg=opts.cfg, attention=cfg)
    softmax, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    got, comm, _ = secure_scores(prep, opts.cfg, attention=cfg, launch=mpc_cluster.run)
    assert relative_error(got, plain) <= 1e-2, warnings
    assert not torch.allclose(plain, softmax)  # RFA really replaced softmax
    assert comm["owner"]["ops"]["attention"]["online"]["bytes"] > 0


def test_the_fits_exp_is_the_oracles_feature_exp():
    """The feature-map fit evaluates the saturating exp in closed form, not through
    ``approx.feature_exp``: both must agree on the whole range, and the fit clamps where the
    oracle's periodic series would wrap round."""
    from dataclasses import replace

    from rfa.fit import saturating_exp

    for cfg in (ACFG, replace(ACFG, rfa_exp_low=-16.0), replace(ACFG, rfa_exp_high=2.0)):
        a = torch.linspace(cfg.rfa_exp_low, cfg.rfa_exp_reach, 40001, dtype=torch.float64)
        top = math.exp(cfg.rfa_exp_high)
        assert ((saturating_exp(a, cfg) - approx.feature_exp(a, cfg)).abs() / top).max() < 1e-12
        assert ((saturating_exp(a.float(), cfg).double() - approx.feature_exp(a, cfg)).abs() / top).max() < 1e-6
    outside = torch.tensor([ACFG.rfa_exp_low - 5.0, ACFG.rfa_exp_reach + 5.0], dtype=torch.float64)
    ends = torch.tensor([ACFG.rfa_exp_low, ACFG.rfa_exp_reach], dtype=torch.float64)
    assert torch.equal(saturating_exp(outside, ACFG), saturating_exp(ends, ACFG))
