"""SmolLM2-135M-Instruct (the real model that ships offline) on real SST-2 sentences."""

import pytest

from secptune.infer import InferOptions, plain_scores, prepare, secure_scores
from secptune.inputs import load_jsonl
from secptune.tasks import task_file

from reference import hf_scores


@pytest.fixture(scope="module")
def prepared():
    try:
        examples = load_jsonl(task_file("sst2", "test"), 2)
    except Exception as exc:  # the shared data directory is part of the checkout's surroundings
        pytest.fail(f"SST-2 data not found: {exc}")
    opts = InferOptions(
        model="smollm2", data="", template="{text} It was {mask}", verbalizer=["terrible", "great"],
        prompt_len=4, batch_size=2,
    )
    return opts, prepare(opts, examples)


def test_plain_exact_equals_transformers(prepared):
    opts, prep = prepared
    ours, _ = plain_scores(prep, exact=True, cfg=opts.cfg)
    assert (ours - hf_scores(prep)).abs().max() <= 1e-4


@pytest.mark.slow  # ~4 min on 2 cores: run with `pytest -m slow`; figures in BENCHMARKS.md
def test_secure_equals_plain_oracle(prepared):
    opts, prep = prepared
    oracle, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    got, comm, _ = secure_scores(prep, opts.cfg)
    assert (got - oracle).abs().max() <= 1e-2 * oracle.abs().max()
    assert comm["dealer"]["dealer"]["bytes"] > 0
