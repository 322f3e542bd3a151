"""Plain exact mode reproduces Hugging Face transformers' logits."""


from secptune.infer import plain_scores

from conftest import prepared_inputs
from reference import hf_scores


def test_plain_exact_equals_transformers(tiny_model):
    opts, prep = prepared_inputs(tiny_model)
    ours, _ = plain_scores(prep, exact=True, cfg=opts.cfg)
    ref = hf_scores(prep)
    assert ours.shape == ref.shape == (4, len(prep.label_ids))
    assert (ours - ref).abs().max() <= 1e-4
    assert ref.std() > 1e-2  # the scores are not degenerate


def test_prompt_changes_scores(tiny_model):
    opts, with_prompt = prepared_inputs(tiny_model, prompt_len=4)
    _, without = prepared_inputs(tiny_model, prompt_len=0)
    a, _ = plain_scores(with_prompt, exact=True, cfg=opts.cfg)
    b, _ = plain_scores(without, exact=True, cfg=opts.cfg)
    assert (a - b).abs().max() > 1e-2


def test_approximate_mode_is_close_to_exact(tiny_model):
    opts, prep = prepared_inputs(tiny_model)
    exact, _ = plain_scores(prep, exact=True, cfg=opts.cfg)
    approx_scores, warnings = plain_scores(prep, exact=False, cfg=opts.cfg)
    assert warnings == {}
    assert (exact - approx_scores).abs().max() <= 0.1 * exact.abs().max()
