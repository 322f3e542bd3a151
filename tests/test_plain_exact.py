"""Plain exact mode reproduces Hugging Face transformers' logits."""

import torch

from secptune.checkpoints import load_hf_model
from secptune.infer import plain_scores
from secptune.transformer import insert_prompt

from conftest import prepared_inputs


def hf_scores(prep):
    """Reference: the HF model fed the same embeddings (prompt included) in float64."""
    model = load_hf_model(prep.model_dir).double()
    emb = model.get_input_embeddings().weight.detach()
    label_ids = torch.tensor(prep.label_ids)
    out = []
    for b in prep.batches:
        embeds = insert_prompt(b.token_onehot @ emb, b.prompt, b.prompt_start)
        kwargs = {"inputs_embeds": embeds}
        if b.key_penalty is not None:
            kwargs["attention_mask"] = (1 - b.key_penalty).long()
        if b.type_onehot is not None:
            kwargs["token_type_ids"] = b.type_onehot.argmax(-1)
        with torch.no_grad():
            logits = model(**kwargs).logits
        pos = b.pred_onehot.argmax(-1)
        out.append(logits[torch.arange(len(pos)), pos][:, label_ids])
    return torch.cat(out)


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
