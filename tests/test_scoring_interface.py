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
