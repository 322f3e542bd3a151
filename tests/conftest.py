"""Shared fixtures: small prepared inputs for the tiny built-in models; the tests' own model
cache (never the user's)."""

import dataclasses
import os
import shutil
import tempfile

import pytest

from rfa.config import DEFAULT_RFA
from secptune.infer import InferOptions, prepare
from secptune.inputs import Example

SENTENCES = [
    Example("a great movie with fine acting", "the film was good", 1),
    Example("the plot was bad and slow", "it was terrible", 0),
    Example("it is a simple story about the world", "a story", 1),
    Example("business news and sports", "tech", 0),
]

TEMPLATES = {
    "tiny-roberta": ("{text} ? {mask} , {text_b}", ["No", "Yes", "great", "bad"]),
    "tiny-bert": ("{text} ? {mask} , {text_b}", ["no", "yes", "great", "bad"]),
    "tiny-llama": ("{text} It was {mask}", ["terrible", "great", "good"]),
}

TINY_MODELS = list(TEMPLATES)
# the server's choice of RFA layers with a budget that makes tiny-llama a hybrid (RFA in one of
# its two layers): the default's budget, chosen for SmolLM2, keeps softmax in both
SERVER_CHOICE = dataclasses.replace(DEFAULT_RFA, auto_kl=0.15)


def prepared_inputs(model: str, prompt_len: int = 4, batch_size: int = 2, examples=SENTENCES):
    template, words = TEMPLATES[model]
    opts = InferOptions(
        model=model,
        data="",
        template=template,
        verbalizer=words,
        prompt_len=prompt_len,
        prompt_std=0.5,  # large enough that the prompt visibly moves the scores
        batch_size=batch_size,
    )
    return opts, prepare(opts, examples)


@pytest.fixture(params=TINY_MODELS)
def tiny_model(request):
    return request.param


@pytest.fixture
def no_leftover_processes(monkeypatch):
    """Tag every process a test starts; after the test none of them may still run."""
    from deploy_parties import MARK, leftovers, new_mark

    mark = new_mark()
    monkeypatch.setenv(MARK, mark)
    yield
    assert leftovers(mark) == []


@pytest.fixture(scope="session")
def mpc_cluster():
    """Owner, server and dealer started once for the whole session; ``.run(owner, server, timeout_s)``
    runs one job on them as :func:`mpc.launcher.run_local` would (tests marked ``mpc``)."""
    from mpc.launcher import LocalCluster

    with LocalCluster() as cluster:
        yield cluster


TEST_CACHE_ENV = "SECPTUNE_TEST_CACHE"
FRESH = "fresh"
_TEMP_CACHE, _USER_CACHE = pytest.StashKey[str](), pytest.StashKey[str | None]()


def pytest_configure(config):
    """The tests' own model cache, never the user's ``~/.cache/secptune``: by default
    ``~/.cache/secptune-test``, shared by test sessions (its entries are keyed by content and
    version: model names carry a build version, RFA fits and public text the weights'
    fingerprint and the fit's settings, so a code change that alters them gets new entries);
    ``SECPTUNE_TEST_CACHE=fresh`` gives this session an empty temporary cache of its own
    (removed after: nothing can depend on an earlier session, at the price of ~5 min of RFA
    fitting for tiny-llama on 2 cores); ``SECPTUNE_TEST_CACHE=DIR`` uses DIR.  Set in the
    environment, so every party process the tests start uses it too."""
    root = os.environ.get(TEST_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "secptune-test")
    if root == FRESH:
        root = tempfile.mkdtemp(prefix="secptune-test-cache-")
        config.stash[_TEMP_CACHE] = root
    config.stash[_USER_CACHE] = os.environ.get("SECPTUNE_CACHE")
    os.environ["SECPTUNE_CACHE"] = root


def pytest_unconfigure(config):
    temp = config.stash.get(_TEMP_CACHE, None)
    if temp:
        shutil.rmtree(temp, ignore_errors=True)
    user = config.stash.get(_USER_CACHE, None)
    if user is None:
        os.environ.pop("SECPTUNE_CACHE", None)
    else:
        os.environ["SECPTUNE_CACHE"] = user


DEPLOY_MODULES = ("test_deploy_", "test_local_auth")  # fresh processes, hosts, TLS and faults by design


def pytest_collection_modifyitems(config, items):
    """Tests on the cluster are ``mpc``, the deployment modules ``deploy``; a test with none of
    the markers is ``unit``."""
    for item in items:
        if "mpc_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mpc)
        if item.module.__name__.startswith(DEPLOY_MODULES):
            item.add_marker(pytest.mark.deploy)
        if not any(item.get_closest_marker(name) for name in ("mpc", "deploy", "slow")):
            item.add_marker(pytest.mark.unit)
