"""The persistent local cluster (mpc.launcher.LocalCluster): each job is a fresh session.

The secure tests share one cluster (the ``mpc_cluster`` fixture); these checks make that
sound.  A job finds a freshly spawned party's state — no masks, handles, traffic, canaries,
CrypTen config, torch seed or environment left by the job before — gets fresh AES keys,
costs exactly the bytes and rounds of a run on fresh processes, and a job that fails or
times out does not poison the next one.
"""

import pytest
import torch

import parties
from mpc import launcher
from mpc.roles import ROLES

PROBE_ENV = "SECPTUNE_CLUSTER_PROBE"


def _probe(run, tag: str):
    job = launcher.PartyJob(parties.probe_fresh_state, (tag,))
    return run(job, job, timeout_s=120)


def _counts(traffic: dict) -> dict:
    """Bytes, rounds and calls of a party's traffic (without the wall times)."""
    return {k: _counts(v) if isinstance(v, dict) else v for k, v in traffic.items() if k != "wall_s"}


def test_each_job_starts_as_a_fresh_session(mpc_cluster, monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "from the test")
    first = _probe(mpc_cluster.run, "first")
    second = _probe(mpc_cluster.run, "second")
    # the job before left canaries, dealer masks, a reveal and traffic: all cleared
    for role in ROLES:
        assert not any(mpc_cluster.leftovers[role].values()), (role, mpc_cluster.leftovers[role])
    fresh = _probe(launcher.run_local, "fresh")  # the reference: three new processes
    for role in ("owner", "server"):
        a, b, f = first[role].value, second[role].value, fresh[role].value
        assert b["env"] == "from the test"  # the caller's environment, not the last job's change
        assert b["handles"] == f["handles"] == (0, 0)
        assert b["exp_iterations"] == f["exp_iterations"] != 3
        assert b["canaries"] is None
        assert not torch.equal(b["torch_draw"], torch.rand(3, generator=torch.Generator().manual_seed(12345)))
        assert b["traffic"] == a["traffic"] == f["traffic"]  # counters start at zero: start-up traffic only
        assert not torch.equal(a["pairwise_draw"], b["pairwise_draw"])  # fresh AES keys per job
        assert not torch.equal(a["dealer_draw"], b["dealer_draw"])
    assert torch.equal(second["owner"].value["revealed"], torch.ones(4, dtype=torch.float64))
    for role in ROLES:  # a job's bytes and rounds are those of a run on fresh processes
        assert _counts(first[role].traffic) == _counts(second[role].traffic) == _counts(fresh[role].traffic), role
        assert second[role].reveals == fresh[role].reveals


def test_a_failed_or_stuck_job_does_not_poison_the_next(mpc_cluster, capsys):
    _probe(mpc_cluster.run, "warm")
    starts, certificate = mpc_cluster.starts, (mpc_cluster.key_dir / "owner" / "owner.crt").read_bytes()
    with pytest.raises(launcher.PartyFailedError, match="server"):
        mpc_cluster.run(launcher.PartyJob(parties.owner_waits_forever, (None, None)),
                        launcher.PartyJob(parties.server_dies_after_start, ("unused",)), timeout_s=120)
    assert "a job failed" in capsys.readouterr().err
    with pytest.raises(launcher.PartyFailedError, match="longer than 5 s"):
        mpc_cluster.run(launcher.PartyJob(parties.owner_waits_forever, (None, None)),
                        launcher.PartyJob(parties.owner_waits_forever, (None, None)), timeout_s=5)
    assert "starting owner, server and dealer again" in capsys.readouterr().err
    result = _probe(mpc_cluster.run, "after")
    assert torch.equal(result["owner"].value["revealed"], torch.ones(4, dtype=torch.float64))
    assert mpc_cluster.starts == starts + 2  # one new start after each failure
    mpc_cluster._procs["dealer"].kill()  # a party lost between jobs: the next job gets new ones
    mpc_cluster._procs["dealer"].join(10)
    result = _probe(mpc_cluster.run, "after a lost party")
    assert torch.equal(result["owner"].value["revealed"], torch.ones(4, dtype=torch.float64))
    assert mpc_cluster.starts == starts + 3 and "not ready for a new job" in capsys.readouterr().err
    assert (mpc_cluster.key_dir / "owner" / "owner.crt").read_bytes() != certificate  # new keys per start
