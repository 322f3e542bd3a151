"""research/baseline_accuracy.py scores the tuner's layout (prompt after the BOS) and trains what it says."""

from types import SimpleNamespace

import torch

import research.baseline_accuracy as ba
from secptune.checkpoints import load_hf_model, load_tokenizer
from secptune.inputs import Template, encode

from conftest import TEMPLATES, prepared_inputs
from reference import hf_scores


def scorer_and_rows(prep, dtype=torch.float64):
    model = load_hf_model(prep.model_dir).to(dtype).eval()
    tokenizer = load_tokenizer(prep.model_dir)
    enc = encode(tokenizer, prep.examples, Template(TEMPLATES["tiny-llama"][0], "causal"), prep.arch.prefix_tokens)
    return ba.Scorer(model, prep.arch.prefix_tokens, tokenizer.eos_token_id), enc


def test_scores_equal_the_tuners_layout():
    _, prep = prepared_inputs("tiny-llama", prompt_len=4)
    scorer, enc = scorer_and_rows(prep)
    prompt = prep.batches[0].prompt[0]
    with torch.no_grad():
        ours = scorer.logits(enc.ids, enc.pred, torch.tensor(prep.label_ids), prompt)
    ref = hf_scores(prep)  # the secptune batch layout fed to transformers
    assert ours.shape == ref.shape and (ours - ref).abs().max() < 1e-9


def test_prompt_tuning_trains_the_prompt_only():
    _, prep = prepared_inputs("tiny-llama", prompt_len=0)
    scorer, enc = scorer_and_rows(prep, torch.float32)
    labels = [int(e.label) for e in prep.examples]
    split = (enc.ids, enc.pred, labels)
    data = SimpleNamespace(splits={"train": split, "dev": split, "test": split},
                           label_ids=torch.tensor(prep.label_ids[:2]), metric="accuracy")
    before = {k: v.clone() for k, v in scorer.model.state_dict().items()}
    bar = SimpleNamespace(set_postfix=lambda **_: None)
    out = ba.train("prompt-grad", scorer, data, epochs=3, batch=2, seed=0, prompt_len=3, bar=bar)
    assert all(torch.equal(before[k], v) for k, v in scorer.model.state_dict().items())
    assert len(out["dev"]) == 4 and len(out["train_loss"]) == 3
    assert out["train_loss"][-1] < out["train_loss"][0]  # the prompt learned something
    assert 0.0 <= out["test"] <= 1.0 and out["best_dev"] == max(out["dev"])
