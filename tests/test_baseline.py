"""Training baselines (secptune.baseline): secure gradients against the plaintext oracle."""

from dataclasses import asdict, replace

import pytest
import torch

import train_jobs
from conftest import prepared_inputs


def _plain_grads(prep, batch, labels, method):
    from secptune import baseline
    from secptune.checkpoints import load_hf_model
    from secptune.server.prepare import prepare_server_model
    from secptune.nonlinear import NativeNonlinear
    from secptune.transformer import Transformer

    server = prepare_server_model(load_hf_model(prep.model_dir))
    arch, weights = server.arch, server.weights
    model = Transformer(arch, weights, NativeNonlinear())
    text = (batch.token_onehot.double(), replace(batch, token_onehot=None), None)
    return baseline.loss_and_grads(model, text, batch.prompt[:1], prep.verbalizer, labels, method)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-roberta"])
def test_secure_gradients_match_plaintext(model, mpc_cluster):
    from mpc import approx, launcher
    from secptune import secure

    opts, prep = prepared_inputs(model, prompt_len=4, batch_size=2)
    batch = prep.batches[0]
    labels = torch.nn.functional.one_hot(torch.tensor([1, 0]), len(prep.label_ids)).double()
    request = secure.OwnerRequest(
        labels=len(prep.label_ids), cfg=asdict(approx.ApproxConfig()), expected_vocab=prep.arch.vocab_size, native=True
    )
    methods = ["prompt-grad", "sft"]
    # gradients only: a whole training step (Adam on shares) runs in tests/test_bench_iteration.py
    results = mpc_cluster.run(
        owner=launcher.PartyJob(train_jobs.owner_job, (request, prep.verbalizer, batch, labels, methods)),
        server=launcher.PartyJob(train_jobs.server_job, (str(prep.model_dir),)),
        timeout_s=600,
    )
    got = results["owner"].value
    for method in methods:
        loss, grads = got[method]
        want_loss, _, want = _plain_grads(prep, batch, labels, method)
        assert abs(float(loss) - float(want_loss)) < 1e-2 * max(1.0, abs(float(want_loss)))
        assert set(grads) == set(want)
        for name, g in grads.items():
            w = want[name].detach()
            scale = float(w.abs().max())
            err = float((g - w).abs().max())
            assert err <= 0.05 * scale + 1e-3, f"{method} {name}: max error {err:.3g} vs gradient scale {scale:.3g}"
