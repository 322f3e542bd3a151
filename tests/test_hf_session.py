"""--mode plain --exact: transformers' own model gives the scores of our exact plaintext transformer."""

import torch

from conftest import prepared_inputs
from mpc import approx
from secptune import hf_session
from secptune.hf_session import HFSession
from secptune.plain import PlainSession


def test_hf_session_matches_exact_transformer(tiny_model, monkeypatch):
    monkeypatch.setitem(hf_session.GROUP_ROWS, "cpu", 3)  # causal: groups of 3 and 1 rows, each cut short
    monkeypatch.setitem(hf_session.MAX_TOKENS, "cpu", 40)  # several forward chunks per group
    opts, prep = prepared_inputs(tiny_model, prompt_len=3, batch_size=4)
    hf = HFSession(prep.model_dir, prep.verbalizer)
    ours = PlainSession(prep.model_dir, prep.verbalizer, exact=True, cfg=approx.ApproxConfig())
    batch = prep.batches[0]
    prompts = torch.randn(3, 3, batch.prompt.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = ours.scores(ours.load_texts(batch), prompts)
    got = hf.scores(hf.load_texts(batch), prompts)
    assert got.shape == expected.shape == (3 * batch.pred_onehot.shape[0], prep.verbalizer.shape[0])
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    # the prompt matters: different candidates give different scores
    rows = batch.pred_onehot.shape[0]
    assert (got[:rows] - got[rows : 2 * rows]).abs().max() > 1e-3 * scale
    assert abs(hf.embedding_std - ours.embedding_std) < 1e-6 * ours.embedding_std



def test_a_float64_model_keeps_the_prompt_in_float64():
    """research/check_smollm2.py compares with transformers in float64 through this session: the prompt
    must not pass through float32 on the way (that alone moves the scores by ~1e-7)."""
    from reference import hf_scores
    from secptune.checkpoints import load_hf_model
    from secptune.scoring import score_batches

    _, prep = prepared_inputs("tiny-llama", prompt_len=4)
    hf = HFSession(prep.model_dir, prep.verbalizer, model=load_hf_model(prep.model_dir).double())
    expected = hf_scores(prep)  # the same model fed the same embeddings, in float64
    assert (score_batches(hf, prep.batches) - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_hf_session_runs_each_prompt_once(monkeypatch):
    """A causal model's texts continue from their candidate's cached prompt keys/values: the scores
    of every sequence run whole (float32 rounding apart), and each candidate keeps its own prompt."""
    monkeypatch.setitem(hf_session.GROUP_ROWS, "cpu", 3)
    monkeypatch.setitem(hf_session.MAX_TOKENS, "cpu", 40)
    _, prep = prepared_inputs("tiny-llama", prompt_len=3, batch_size=4)
    hf = HFSession(prep.model_dir, prep.verbalizer)
    batch = prep.batches[0]
    prompts = torch.randn(3, 3, batch.prompt.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    text_id = hf.load_texts(batch)
    runs = []
    monkeypatch.setattr(hf, "_prompt_states", lambda p, f=hf._prompt_states: runs.append(p) or f(p))
    shared = hf.scores(text_id, prompts)
    assert len(runs) == 1 and runs[0].size(0) == 3
    monkeypatch.setattr(hf_session, "prompt_first", lambda *a: False)  # every sequence whole
    whole = hf.scores(text_id, prompts)
    assert len(runs) == 1
    assert (shared - whole).abs().max() <= 1e-5 * whole.abs().max()
    swapped = hf.scores(text_id, prompts[[1, 0, 2]]).view(3, 4, -1)  # positive control: prompts follow their texts
    assert (swapped[0] - whole.view(3, 4, -1)[1]).abs().max() <= 1e-5 * whole.abs().max()
    assert (swapped[0] - whole.view(3, 4, -1)[0]).abs().max() > 1e-3 * whole.abs().max()
