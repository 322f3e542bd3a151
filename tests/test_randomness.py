"""Masks come from AES-CTR keystreams: what a party observes does not predict the other's masks.

Positive controls: the same attacks succeed against CrypTen's old generator (torch's
Mersenne Twister, swapped in with the test-only switch), so these tests can fail.
"""

from dataclasses import asdict

import pytest
import torch

import attack_jobs
import mt19937
from conftest import prepared_inputs
from mpc import launcher, prg
from secptune import owner, secure
from secptune.scoring import score_batches

OBSERVED, PREDICTED = 312, 1000  # 312 int64 draws = 624 MT words: the whole state


def _owner_masks_seen_by_server(monkeypatch, rng: str | None, launch) -> torch.Tensor:
    if rng:
        monkeypatch.setenv(prg.TEST_ONLY_ENV, rng)
    else:
        monkeypatch.delenv(prg.TEST_ONLY_ENV, raising=False)
    opts, prep = prepared_inputs("tiny-llama", prompt_len=4, batch_size=2)
    request = secure.OwnerRequest(
        labels=len(prep.label_ids), cfg=asdict(opts.cfg), expected_vocab=prep.arch.vocab_size
    )
    results = launch(
        owner=launcher.PartyJob(owner.owner_party, (score_batches, (prep.batches,), request, prep.verbalizer)),
        server=launcher.PartyJob(attack_jobs.server_collects_owner_masks, (str(prep.model_dir),)),
    )
    assert results["owner"].value["result"].shape == (4, len(prep.label_ids))  # the forward really ran
    masks = results["server"].value["owner_masks"]
    assert masks.numel() >= OBSERVED + PREDICTED
    return masks


@pytest.mark.parametrize("rng", [None, "mt19937"], ids=["aes-ctr", "mersenne-twister-control"])
def test_the_server_cannot_predict_the_owners_next_masks(monkeypatch, rng, mpc_cluster):
    masks = _owner_masks_seen_by_server(monkeypatch, rng, mpc_cluster.run).tolist()
    predicted = mt19937.predict_int64(masks[:OBSERVED], PREDICTED)
    hits = sum(p == m for p, m in zip(predicted, masks[OBSERVED : OBSERVED + PREDICTED]))
    if rng == "mt19937":
        assert hits == PREDICTED  # the control: the attack works on the old generator
    else:
        assert hits == 0


def _draw2(seed: int) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    return tuple(int(torch.randint(-(2**63), 2**63 - 1, (), generator=g)) for _ in range(2))


def _seed_search(owner_value: int, window: range) -> int | None:
    """CrypTen's dealer drew the owner's and the server's seeds as two consecutive draws of
    one Mersenne Twister: find the dealer's seed from the owner's, then the server's."""
    for seed in window:
        first, second = _draw2(seed)
        if first == owner_value:
            return second
    return None


def test_one_partys_key_does_not_lead_to_the_others():
    window = range(70_000, 70_000 + 4096)  # a slice of the 2^32 seeds an attacker would scan
    owner_seed, server_seed = _draw2(window[1234])  # the old scheme (control)
    assert _seed_search(owner_seed, window) == server_seed
    owner_key, server_key = prg.new_key(), prg.new_key()  # each party keys its own stream
    as_seed = int.from_bytes(owner_key[:8], "little", signed=True)
    assert _seed_search(as_seed, window) is None
    assert owner_key != server_key and len(owner_key) == 32


def test_streams_agree_per_key_and_refuse_the_mersenne_twister(monkeypatch):
    monkeypatch.delenv(prg.TEST_ONLY_ENV, raising=False)
    key = prg.new_key()
    a, b, other = prg.stream(key), prg.stream(key), prg.stream(prg.new_key())
    first = a.ring((1000,))
    assert torch.equal(first, b.ring((1000,)))  # a party and the dealer stay in step
    assert not torch.equal(first, other.ring((1000,)))
    assert first.unique().numel() == 1000 and (first < 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    bits = a.bits((4000,), 1)
    assert set(bits.tolist()) == {0, 1}
    with pytest.raises(prg.InsecureRandomnessError, match="Generator"):
        prg.ring_element((3,), generator=torch.Generator())
