"""--pad-bucket: the public padded length is a bucket, and padding does not change the scores."""

import dataclasses

import pytest

from secptune.errors import InputError
from secptune.infer import plain_scores, prepare
from secptune.inputs import padded_length

from conftest import SENTENCES, prepared_inputs


def test_padded_length_rounds_up_to_the_bucket_within_the_limit():
    assert padded_length(13, 0, 512) == 13
    assert padded_length(13, 16, 512) == 16 and padded_length(16, 16, 512) == 16
    assert padded_length(500, 64, 510) == 510  # never beyond the model's positions
    with pytest.raises(InputError, match="pad-bucket"):
        padded_length(13, -4, 512)


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-llama"])
def test_bucket_padding_keeps_the_scores(model):
    opts, prep = prepared_inputs(model)
    bucketed = prepare(dataclasses.replace(opts, pad_bucket=32), SENTENCES)
    assert all(b.token_onehot.shape[1] % 32 == 0 for b in bucketed.batches)
    assert any(b.token_onehot.shape[1] != c.token_onehot.shape[1] for b, c in zip(bucketed.batches, prep.batches))
    plain, _ = plain_scores(prep, exact=False, cfg=opts.cfg)
    padded, _ = plain_scores(bucketed, exact=False, cfg=opts.cfg)
    assert (plain - padded).abs().max() <= 1e-6 * plain.abs().max()
