"""mpc.costmodel: what a link adds, with and without the dealer as a third host."""

import pytest

from mpc import costmodel

LINK = costmodel.Link("test", 8e6, 0.01)  # 1 MB/s, 10 ms one way


def test_online_time_is_the_busier_partys_rounds_and_bytes():
    comm = {"owner": {"bytes": 2_000_000, "rounds": 10}, "server": {"bytes": 1_000_000, "rounds": 12}}
    assert costmodel.link_times(comm, [LINK])["test"] == pytest.approx(12 * 0.01 + 2.0)


def test_the_dealer_adds_a_round_trip_per_request_and_its_bytes():
    comm = {
        "owner": {"bytes": 1_000_000, "rounds": 4},
        "server": {"bytes": 1_000_000, "rounds": 4},
        "dealer": {"bytes": 3_000_000, "rounds": 5 * costmodel.REQUEST_ROUNDS},  # 5 requests
    }
    online = costmodel.link_times(comm, [LINK])["test"]
    both = costmodel.link_times_with_dealer(comm, [LINK])["test"]
    assert online == pytest.approx(4 * 0.01 + 1.0)
    assert both - online == pytest.approx(5 * 2 * 0.01 + 3.0)
    # without dealer traffic the two models agree (the control: the difference is the dealer's)
    assert costmodel.link_times_with_dealer({**comm, "dealer": {"bytes": 0, "rounds": 0}}, [LINK])["test"] == online


def test_a_sessions_counts_give_every_wire_and_the_online_part_to_the_links():
    """A transport record: each computing party's total includes its dealer requests; only the
    online part goes on the online link, the dealer's bytes on its own."""
    comm = {
        "owner": {"bytes": 1_000_500, "rounds": 4 + 3, "online": {"bytes": 1_000_000, "rounds": 4}},
        "server": {"bytes": 1_000_000, "rounds": 4, "online": {"bytes": 1_000_000, "rounds": 4}},
        "dealer": {"bytes": 3_000_000, "rounds": costmodel.REQUEST_ROUNDS},
    }
    assert costmodel.all_wires_bytes(comm) == 5_000_500
    assert costmodel.session_link_times(comm, [LINK])["test"] == pytest.approx(4 * 0.01 + 1.0 + 2 * 0.01 + 3.0)
