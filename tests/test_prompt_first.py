"""A causal model's prompt comes first (right after the fixed prefix), so its rows never see the
text: a plain session runs each candidate's prompt once and the texts attend to its keys/values
(``Transformer._forward_prompt_first``).  The scores must be those of the full sequences, with every
attention and approximation: the secure run (every row in one pass) is tested against this oracle."""

from dataclasses import replace

import pytest
import torch

from conftest import prepared_inputs
from mpc import approx
from rfa.config import SOFTMAX, AttentionConfig
from secptune.batch import population_inputs
from secptune.nonlinear import ExactNonlinear
from secptune.plain import plain_session

CFG = approx.ApproxConfig()
RFA_EVERYWHERE = AttentionConfig(kind="rfa", features="positive", num_features=16)


def _inputs(attention, candidates: int = 3, scale: float = 0.5):
    opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=3)
    session = plain_session(prep.model_dir, prep.verbalizer, CFG, attention)  # the float64 oracle
    session.load_texts(prep.batches[0])
    embeds, texts, _ = session.texts[0]
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randn(candidates, 4, embeds.size(-1), generator=gen, dtype=torch.float64) * scale
    embeds, batch = population_inputs(embeds, texts, prompts)
    return session, embeds, batch


@pytest.mark.parametrize("attention", [SOFTMAX, RFA_EVERYWHERE], ids=["softmax", "rfa"])
@pytest.mark.parametrize("exact", [False, True], ids=["approximations", "exact"])
def test_prompt_first_gives_the_full_sequences_scores(attention, exact):
    session, embeds, batch = _inputs(attention)
    if exact:
        session.model.nl = ExactNonlinear(cfg=CFG, attention=attention)
    assert batch.prompt_start == 0 and batch.shared_prompt.size(0) == 3  # the layout the shortcut needs
    shortcut = session.model.forward(embeds, batch, session.head)
    full = session.model.forward(embeds, replace(batch, shared_prompt=None), session.head)  # every row, every text
    assert shortcut.shape == full.shape and shortcut.size(0) == 9  # 3 candidates x 3 texts
    assert float((shortcut - full).abs().max()) <= 1e-10 * float(full.abs().max())
    # the candidates differ, so a prompt served to the wrong texts would show
    per_candidate = full.reshape(3, 3, -1)
    assert float((per_candidate[0] - per_candidate[1]).abs().max()) > 1e-3


def test_prompt_first_keeps_each_candidates_prompt_with_its_texts():
    """Positive control: swapping two candidates' prompt keys/values changes their texts' scores."""
    session, embeds, batch = _inputs(SOFTMAX)
    model = session.model
    kept: dict = {}
    model.causal(batch.shared_prompt, keep=kept)
    swapped = {i: (k[[1, 0, 2]], v[[1, 0, 2]]) for i, (k, v) in kept.items()}
    P, n = batch.shared_prompt.size(1), embeds.size(1)
    text = embeds.narrow(1, P, n - P)
    right = model.causal(text, prefix=kept, repeat=3)
    wrong = model.causal(text, prefix=swapped, repeat=3)
    assert float((right[:3] - wrong[:3]).abs().max()) > 1e-3  # candidate 0's texts saw candidate 1's prompt
    assert torch.equal(right[6:], wrong[6:])  # candidate 2 untouched


@pytest.mark.parametrize("attention", [SOFTMAX, RFA_EVERYWHERE], ids=["softmax", "rfa"])
def test_session_groups_by_length_and_runs_each_prompt_once(attention, monkeypatch):
    """The plain session scores texts in length groups, each cut at its last scored position, a few
    candidates per forward, all from one run of the prompts: the scores of the full padded sequences."""
    from secptune import batch as batch_module, plain

    monkeypatch.setitem(batch_module.GROUP_ROWS, "cpu", 1)  # 3 texts of 14, 15, 15 rows: 3 groups
    monkeypatch.setitem(plain.MAX_ROWS, "cpu", 20)  # several forwards per group
    session, embeds, batch = _inputs(attention)
    full = session.model.forward(embeds, replace(batch, shared_prompt=None), session.head)
    runs = []
    monkeypatch.setattr(session.model, "prompt_states", lambda p, f=session.model.prompt_states: runs.append(p) or f(p))
    got = session.scores(0, batch.shared_prompt)
    assert len(runs) == 1 and runs[0].size(0) == 3  # every candidate's prompt, once
    groups = session.texts[0][2]
    assert [g.size(1) for _, g, _ in groups] == [14, 15, 15]  # the shortest text cut short
    assert got.shape == full.shape
    assert float((got - full).abs().max()) <= 1e-10 * float(full.abs().max())
