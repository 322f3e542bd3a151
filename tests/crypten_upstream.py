"""pytest plugin: CrypTen's own test suite with secptune's CrypTen integration installed.

Loaded by ``scripts/crypten_tests.sh`` (``-p crypten_upstream``) into a pytest run over
CrypTen's ``test/`` folder.  CrypTen's ``MultiProcessTestCase`` starts every party
in a fresh interpreter; this plugin makes each party install :mod:`mpc.crypten_seam`
before CrypTen starts, and runs secptune's dealer (:class:`mpc.dealer.Dealer`) as
the trusted third party in place of CrypTen's ``TTPServer`` (with the seam installed
the parties speak the dealer's protocol).  CrypTen's test code runs unchanged.
"""

from __future__ import annotations

import os
import unittest

import pytest

from mpc import crypten_seam, dealer


def run_party(cls, *args) -> None:
    """A party process of CrypTen's harness: the seam first, then CrypTen's own runner."""
    crypten_seam.install()
    cls._run(*args)


def run_dealer(config) -> None:
    """The trusted-third-party process: secptune's dealer until rank 0 ends the session."""
    from crypten.config import cfg

    cfg.set_config(config)
    crypten_seam.install()
    dealer.Dealer().serve()


def _spawn_party(case, rank):
    from crypten.config import cfg

    process = case.mp_context.Process(
        target=run_party,
        name=f"Process {rank}",
        args=(type(case), case._current_test_name(), cfg.config, rank, case.world_size, case.file, case.queue),
    )
    process.start()
    return process


def _spawn_dealer(case):
    from crypten.config import cfg

    os.environ.update(
        WORLD_SIZE=str(case.world_size), RANK=str(case.world_size),
        RENDEZVOUS=f"file://{case.file}", BACKEND="gloo",
    )
    process = case.mp_context.Process(target=run_dealer, name="TTP", args=(cfg.config,))
    process.start()
    return process


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Collect CrypTen's test classes as its unittest harness expects."""
    if not isinstance(obj, type) or not name.startswith("Test"):
        return None
    if not issubclass(obj, unittest.TestCase):
        return []  # a mixin of test methods (TestMPC, TestCommunicator): run through its TestCase classes
    from test.multiprocess_test_case import MultiProcessTestCase

    if issubclass(obj, MultiProcessTestCase):
        # the harness makes each test method spawn the parties in setUpClass, which pytest
        # runs after it has bound the methods: wrap them now (a second wrap is inert)
        obj.setUpClass()
    return None


def pytest_configure(config) -> None:
    try:
        from test import multiprocess_test_case as harness
    except ImportError as exc:
        raise pytest.UsageError(
            "the crypten_upstream plugin runs in the root of CrypTen's source (the folder holding "
            f"test/multiprocess_test_case.py), e.g. through scripts/crypten_tests.sh: {exc}"
        ) from exc
    crypten_seam.check_version()
    harness.MultiProcessTestCase._spawn_process = _spawn_party
    harness.MultiProcessTestCase._spawn_ttp = _spawn_dealer
