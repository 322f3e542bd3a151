"""Secure mode equals the plaintext oracle (same approximations) within fixed-point tolerance.

Tolerance: max |secure - plain| <= 1e-2 * max |plain score| (16-bit fixed point).
"""

import time

import pytest

from mpc import launcher
from mpc.errors import InsecureProviderError
from mpc.session import assert_secure_provider
from secptune.infer import plain_scores, secure_scores

from conftest import TINY_MODELS, prepared_inputs
import parties


def relative_error(secure_s, plain_s):
    return float((secure_s - plain_s).abs().max() / plain_s.abs().max())


@pytest.mark.parametrize("model", TINY_MODELS)
def test_secure_equals_plain_oracle(model, mpc_cluster):
    opts, prep = prepared_inputs(model, prompt_len=4, batch_size=2)
    plain, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    got, comm, _ = secure_scores(prep, opts.cfg, launch=mpc_cluster.run)
    assert got.shape == plain.shape == (4, len(prep.label_ids))
    assert relative_error(got, plain) <= 1e-2
    assert comm["owner"]["online"]["bytes"] > 0 and comm["server"]["online"]["bytes"] > 0
    assert comm["dealer"]["dealer"]["bytes"] > 0  # triples came from the dealer process


def _encode(t):
    return (t.double() * 2**16).long().flatten()


def _meaningful(values):
    return values[values.abs() > 1]  # 0/1 also occur as honest 1-bit openings


# What each party receives in a real forward: tests/test_audit.py (canaries, uniformity, mutation test).


def test_audit_detects_plaintext_on_the_wire(mpc_cluster):
    """Negative control: a server that broadcasts a weight matrix is caught."""
    from secptune.arch import arch_from_config, extract_weights
    from secptune.checkpoints import load_hf_model, resolve_model

    model_dir = resolve_model("tiny-llama")
    model = load_hf_model(model_dir)
    w = extract_weights(model, arch_from_config(model.config))["l0.q.w"]
    canaries = _meaningful(_encode(w))
    results = mpc_cluster.run(
        owner=launcher.PartyJob(parties.owner_receives_broadcast, (tuple(w.shape), canaries)),
        server=launcher.PartyJob(parties.server_leaks_weights, (str(model_dir), None)),
    )
    assert results["owner"].audit["canary_hits"] > 0.9 * canaries.numel()


@pytest.mark.deploy  # fresh processes: a party's death is what it tests
def test_dead_server_stops_the_run_within_60s():
    started = time.monotonic()
    with pytest.raises(launcher.PartyFailedError, match="server"):
        launcher.run_local(
            owner=launcher.PartyJob(parties.owner_waits_forever, (None, None)),
            server=launcher.PartyJob(parties.server_dies_after_start, ("unused",)),
        )
    assert time.monotonic() - started < 60


def test_tfp_provider_is_refused():
    import crypten

    with crypten.cfg.temp_override({"mpc.provider": "TFP"}):
        with pytest.raises(InsecureProviderError, match="dealer"):
            assert_secure_provider()
