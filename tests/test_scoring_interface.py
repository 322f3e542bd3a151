"""Every scoring session implements secptune.scoring.ScoringSession."""

import inspect

import pytest

from secptune.hf_session import HFSession
from secptune.plain import PlainSession
from secptune.scoring import ScoringSession
from secptune.secure import SecureSession

METHODS = [name for name, value in vars(ScoringSession).items() if inspect.isfunction(value) and not name.startswith("_")]


def _accepts(method, protocol_method) -> bool:
    """Whether ``method`` can be called the way the protocol's method is (same leading parameters)."""
    wanted = list(inspect.signature(protocol_method).parameters)[1:]
    have = list(inspect.signature(method).parameters)[1:]
    return have[: len(wanted)] == wanted


@pytest.mark.parametrize("session", [PlainSession, HFSession, SecureSession])
def test_session_implements_the_interface(session):
    assert METHODS == ["load_texts", "scores", "traffic", "close"]
    for name in METHODS:
        assert _accepts(getattr(session, name), getattr(ScoringSession, name)), f"{session.__name__}.{name}"


def test_the_check_can_fail():
    class Wrong:
        def load_texts(self, texts):  # another parameter name: callers pass batch=
            return 0

    assert not _accepts(Wrong.load_texts, ScoringSession.load_texts)
    assert not isinstance(Wrong(), ScoringSession)


def test_score_batches_shows_progress_and_keeps_order(capsys):
    """`infer` scores batch after batch (a secure one for many minutes): a bar counts them, and the
    scores come back in the batches' order; a single batch shows no bar."""
    import torch

    from secptune.batch import Batch
    from secptune.scoring import score_batches

    class Counting:  # each text set's scores are its id, so the order is visible
        def load_texts(self, batch):
            return int(batch.prompt[0, 0, 0])

        def scores(self, text_id, prompts):
            return torch.full((2, 1), float(text_id))

    batches = [Batch(token_onehot=None, prompt=torch.full((1, 1, 1), float(i)), pred_onehot=None) for i in range(3)]
    assert score_batches(Counting(), batches).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    err = capsys.readouterr().err
    assert "scoring" in err and "3/3" in err
    score_batches(Counting(), batches[:1])
    assert "scoring" not in capsys.readouterr().err
