"""The privacy audit finds a missing mask: what each party learns on every receive path.

Mutation test: with every mask forced to zero (the test-only switch of mpc.prg) the
audit must report canary hits and unmasked payloads; with the real keystreams, none.
Canaries are the other party's secrets as the run encodes them: the owner's prompt
and the fixed-point one (its one-hot inputs) for the server; for the owner, the
weights exactly as the server shares them (secptune.server.prepare.prepare_server_model).
"""

import pytest
import torch

from mpc import prg
from secptune.checkpoints import load_hf_model
from secptune.infer import plain_scores, secure_scores
from secptune.server.prepare import prepare_server_model

from conftest import prepared_inputs


def _encode(t: torch.Tensor) -> torch.Tensor:
    from crypten.encoder import FixedPointEncoder

    return FixedPointEncoder(precision_bits=16).encode(t.double()).flatten()


def _meaningful(values: torch.Tensor) -> torch.Tensor:
    return values[values.abs() > 1]  # 0/1 occur as honest one-bit openings


def _smollm2_inputs():
    from secptune.infer import InferOptions, prepare
    from secptune.inputs import load_jsonl
    from secptune.tasks import task_file

    opts = InferOptions(model="smollm2", data="", template="{text} It was {mask}", verbalizer=["terrible", "great"],
                        prompt_len=4, batch_size=2)
    return opts, prepare(opts, load_jsonl(task_file("sst2", "test"), 2))


def _audits(model: str, monkeypatch, zero_masks: bool, launch) -> tuple[dict, dict]:
    if zero_masks:
        monkeypatch.setenv(prg.TEST_ONLY_ENV, "zero")
    else:
        monkeypatch.delenv(prg.TEST_ONLY_ENV, raising=False)
    opts, prep = _smollm2_inputs() if model == "smollm2" else prepared_inputs(model, prompt_len=4, batch_size=2)
    weights = prepare_server_model(load_hf_model(prep.model_dir)).weights
    canaries = {
        "server": _meaningful(torch.cat([_encode(b.prompt) for b in prep.batches] + [_encode(torch.ones(1))])),
        "owner": _meaningful(torch.cat([_encode(w) for w in weights.values()])),
    }
    scores, _, results = secure_scores(prep, opts.cfg, canaries, launch=launch)
    plain, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    assert (scores - plain).abs().max() <= 1e-2 * plain.abs().max()  # zero masks compute correctly too
    for role in ("owner", "server"):  # every reveal went to the owner: the scores (and one-bit range checks)
        reveals = results[role].reveals
        assert {dst for dst, _ in reveals} == {0}
        assert [r for r in reveals if r[1] != (1,)] == [(0, tuple(plain[i : i + 2].shape)) for i in range(0, len(plain), 2)]
    return results["owner"].audit, results["server"].audit


@pytest.mark.parametrize(
    "model", ["tiny-llama", "tiny-roberta", pytest.param("smollm2", marks=pytest.mark.slow)]  # smollm2: ~10 min
)
def test_audit_finds_zero_masks_and_passes_real_ones(model, monkeypatch, mpc_cluster):
    for zero_masks in (True, False):
        for role, audit in zip(("owner", "server"), _audits(model, monkeypatch, zero_masks, mpc_cluster.run)):
            paths = audit["paths"]
            assert audit["received_elements"] > 10_000 and {"all_reduce", "broadcast" if role == "owner" else "all_reduce"} <= set(paths)
            if zero_masks:  # the mutation: the weight opening / input openings in the clear
                assert paths["all_reduce"]["canary_hits"] > 0, (role, paths)
                assert paths["all_reduce"]["unmasked"] > 0 and paths["opened"]["unmasked"] > 0, (role, paths)
            else:
                assert audit["canary_hits"] == 0 and audit["unmasked"] == 0, (role, str(paths))
