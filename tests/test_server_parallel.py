"""secptune.server.parallel: the server's independent preparation jobs side by side."""

import time

import pytest
import torch

from secptune.server.parallel import map_jobs


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_jobs_run_on_one_thread_each_and_come_back_in_order(two_threads):
    seen = []

    def job(i):
        seen.append(torch.get_num_threads())
        time.sleep(0.01 * (5 - i))  # later items finish first
        return i * i

    assert map_jobs(job, list(range(5)), "squares", "item", show=False) == [0, 1, 4, 9, 16]
    assert seen == [1] * 5 and torch.get_num_threads() == 2  # restored


def test_a_failure_stops_the_jobs_not_started_and_is_raised(two_threads):
    started = []

    def job(i):
        started.append(i)
        if i == 1:
            raise ValueError("layer 1 failed")
        time.sleep(0.2)
        return i

    with pytest.raises(ValueError, match="layer 1 failed"):
        map_jobs(job, list(range(20)), "jobs", "item", show=False)
    assert 0 in started and len(started) < 6  # the rest were never started
    assert torch.get_num_threads() == 2


def test_one_thread_runs_the_jobs_one_by_one():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        order = []
        assert map_jobs(lambda i: order.append(i) or -i, [3, 1, 2], "jobs", "item", show=False) == [-3, -1, -2]
        assert order == [3, 1, 2]
    finally:
        torch.set_num_threads(before)
