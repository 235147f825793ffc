"""The twin's event loop against queueing theory and against the batcher's and router's rules."""

from __future__ import annotations

import numpy as np
import pytest

from kcloud.twin.sim import FAILED, NO_REPLICA, OK, SHED, TIMED_OUT, Batching, ReplicaTimes, simulate

NO_WAIT = Batching(max_queue_delay_s=0.0, queue_limit=10**9, queue_budget_s=0.0, pipeline_depth=1)


def fixed(service_s: float, batch_rows: int = 0, width: int = 1, **more: object) -> ReplicaTimes:
    """A replica whose batch of b rows takes b × service_s."""
    return ReplicaTimes(service_s=np.arange(width + 1) * service_s, batch_rows=batch_rows, **more)  # type: ignore[arg-type]


def poisson(rate: float, n: int, seed: int = 1) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n))


def test_one_replica_without_batching_is_the_md1_queue() -> None:
    # Pollaczek-Khinchine: M/D/1 mean time in system = s + rho / (2 mu (1 - rho))
    rate, service = 70.0, 0.01
    arrivals = poisson(rate, 200_000)
    out = simulate(arrivals, np.ones(len(arrivals), np.int64), [fixed(service)], NO_WAIT)
    assert (out.status == OK).all()
    rho = rate * service
    expected = service + rho / (2 * (1 / service) * (1 - rho))
    assert np.mean(out.end_s - arrivals) == pytest.approx(expected, rel=0.03)
    assert out.busy_s.sum() == pytest.approx(len(arrivals) * service)


def test_service_times_that_vary_make_the_mg1_queue() -> None:
    # Pollaczek-Khinchine, M/G/1: mean wait = rho·s·(1 + cv²) / (2 (1 - rho)); lognormal factors of
    # mean 1 and log-space sigma have cv² = exp(sigma²) - 1
    rate, service, sigma = 70.0, 0.01, 0.8
    arrivals = poisson(rate, 400_000)
    out = simulate(
        arrivals, np.ones(len(arrivals), np.int64), [fixed(service, service_sigma=sigma)], NO_WAIT, seed=3
    )
    rho, cv2 = rate * service, np.exp(sigma**2) - 1
    expected = service + rho * service * (1 + cv2) / (2 * (1 - rho))
    assert np.mean(out.end_s - arrivals) == pytest.approx(expected, rel=0.05)
    assert out.busy_s.sum() == pytest.approx(len(arrivals) * service, rel=0.01)  # the mean is kept
    again = simulate(
        arrivals, np.ones(len(arrivals), np.int64), [fixed(service, service_sigma=sigma)], NO_WAIT, seed=3
    )
    assert np.array_equal(again.end_s, out.end_s)  # the same seed, the same run


def test_a_batch_closes_at_its_rows_or_after_the_queue_delay() -> None:
    # ten requests at once, batches of 4: two full batches at once, the last 2 after the 5 ms delay
    batching = Batching(max_queue_delay_s=0.005, queue_limit=100, queue_budget_s=0.0, pipeline_depth=1)
    out = simulate(np.zeros(10), np.ones(10, np.int64), [fixed(0.001, batch_rows=4, width=8)], batching)
    assert out.batches.tolist() == [3] and out.rows.tolist() == [10]
    np.testing.assert_allclose(out.end_s, [0.004] * 4 + [0.008] * 4 + [0.010] * 2)


def test_pipeline_depth_two_sends_the_next_batch_while_one_computes() -> None:
    # depth 2 with no queue delay: each request closes its own batch while the worker holds fewer than 2
    batching = Batching(max_queue_delay_s=0.0, queue_limit=100, queue_budget_s=0.0, pipeline_depth=2)
    rows = np.ones(6, np.int64)
    out = simulate(np.array([0.0, 0.0, 0.0, 0.0, 0.001, 0.001]), rows, [fixed(0.001, 4, 8)], batching)
    # the first two go at once (the second waits on the worker); the next two wait for a free slot and go
    # together when the first batch is done, the last two when the second is
    np.testing.assert_allclose(out.end_s, [0.001, 0.002, 0.004, 0.004, 0.006, 0.006])
    assert out.batches.tolist() == [4]


def test_the_router_sends_each_request_to_the_least_loaded_replica() -> None:
    arrivals = np.zeros(9)
    out = simulate(arrivals, np.ones(9, np.int64), [fixed(0.01), fixed(0.01), fixed(0.01)], NO_WAIT)
    assert sorted(np.bincount(out.replica).tolist()) == [3, 3, 3]


def test_a_full_queue_or_a_deadline_sheds_with_429_and_waiting_past_a_deadline_answers_504() -> None:
    shed = Batching(max_queue_delay_s=0.0, queue_limit=2, queue_budget_s=0.0, pipeline_depth=1)
    out = simulate(np.zeros(5), np.ones(5, np.int64), [fixed(0.01)], shed)
    # one computes, two wait, the rest are refused at once
    assert (out.status == OK).sum() == 3 and (out.status == SHED).sum() == 2

    # batches of 4 drain 333 rows/s; one alone takes 10 ms. Ten requests at once, 20 ms deadlines:
    # admitted while the expected wait is within the deadline (7), the rest shed; the first computes
    # alone, the next four together until 22 ms, and the two left wait past their deadline
    replica = ReplicaTimes(service_s=np.array([0.0, 0.010, 0.0107, 0.0113, 0.012]), batch_rows=4)
    out = simulate(np.zeros(10), np.ones(10, np.int64), [replica], NO_WAIT, deadline_s=0.02)
    assert out.status.tolist() == [OK] * 5 + [TIMED_OUT] * 2 + [SHED] * 3
    np.testing.assert_allclose(out.end_s[5:7], 0.02)  # failed at the deadline, never computed
    assert out.rows.tolist() == [5]


def test_the_queue_budget_sheds_what_would_wait_too_long() -> None:
    budget = Batching(max_queue_delay_s=0.0, queue_limit=100, queue_budget_s=0.03, pipeline_depth=1)
    out = simulate(np.zeros(10), np.ones(10, np.int64), [fixed(0.01)], budget)
    # admitted while the work ahead is at most 30 ms at 100 rows/s
    assert (out.status == OK).sum() == 4 and (out.status == SHED).sum() == 6


def test_a_failed_replica_hands_its_requests_to_another_once() -> None:
    arrivals = np.linspace(0, 1, 101)
    replicas = [fixed(0.004, down_at=0.5), fixed(0.004)]
    out = simulate(arrivals, np.ones(101, np.int64), replicas, NO_WAIT)
    assert (out.status == OK).all()
    assert (out.replica[arrivals > 0.5] == 1).all()
    # with no second replica, what the failed one held is refused: 503 until the horizon
    out = simulate(arrivals, np.ones(101, np.int64), [fixed(0.004, down_at=0.5)], NO_WAIT)
    assert (out.status[arrivals > 0.5] == NO_REPLICA).all()


def test_a_request_whose_retry_fails_too_answers_502() -> None:
    replicas = [fixed(1.0, down_at=0.5), fixed(1.0, down_at=0.6)]
    out = simulate(np.zeros(2), np.ones(2, np.int64), replicas, NO_WAIT)
    # both start at once on different replicas; the first's request moves to the second, which fails
    # too: that request has had its retry (502), the second's own retry finds no replica left (503)
    assert out.status.tolist() == [FAILED, NO_REPLICA]


def test_a_replica_serves_only_from_its_start() -> None:
    arrivals = np.array([0.0, 0.2])
    out = simulate(arrivals, np.ones(2, np.int64), [fixed(0.01, up_at=0.1)], NO_WAIT)
    assert out.status.tolist() == [NO_REPLICA, OK]


def test_busy_time_is_kept_per_time_bin() -> None:
    out = simulate(np.array([0.5]), np.ones(1, np.int64), [fixed(1.0)], NO_WAIT, bin_s=1.0, horizon_s=3.0)
    np.testing.assert_allclose(out.busy_s[0, :3], [0.5, 0.5, 0.0])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        simulate(np.zeros(1), np.ones(1, np.int64), [], NO_WAIT)
    with pytest.raises(ValueError, match="differ in length"):
        simulate(np.zeros(2), np.ones(1, np.int64), [fixed(0.01)], NO_WAIT)
    with pytest.raises(ValueError, match="service_sigma"):
        simulate(np.zeros(1), np.ones(1, np.int64), [fixed(0.01, service_sigma=-1.0)], NO_WAIT)


def test_the_routers_tree_finds_what_the_rotated_minimum_finds() -> None:
    # the event loop's router keeps loads in a min-tree; it must answer as `Router._least_loaded`
    # does: the minimum of the live replicas taken in rotated order from the request's turn
    from kcloud.twin.sim import _first_at_most, _set_load

    rng = np.random.default_rng(3)
    for replicas in (1, 2, 5, 37, 64):
        size = 1 << max(0, (replicas - 1).bit_length())
        tree = np.full(2 * size, np.inf)
        loads = rng.integers(0, 4, replicas).astype(float)
        loads[rng.random(replicas) < 0.2] = np.inf  # not live
        for r, load in enumerate(loads):
            _set_load(tree, size, r, load)
        for turn in range(replicas):
            rotated = [(turn + j) % replicas for j in range(replicas)]
            live = [r for r in rotated if loads[r] < np.inf]
            expected = min(live, key=lambda r: loads[r]) if live else -1
            found = _first_at_most(tree, size, turn, tree[1]) if tree[1] < np.inf else -1
            if found == -1 and tree[1] < np.inf:
                found = _first_at_most(tree, size, 0, tree[1])
            assert found == expected, (replicas, turn, loads)


def test_replicas_on_one_device_share_its_compute() -> None:
    # two replicas on one single-lane device: the ten batches run one after another, not two at once
    arrivals = np.zeros(10)
    shared = [fixed(0.01, device="cpu0"), fixed(0.01, device="cpu0")]
    out = simulate(arrivals, np.ones(10, np.int64), shared, NO_WAIT)
    assert out.end_s.max() == pytest.approx(0.10)
    assert sorted(np.bincount(out.replica).tolist()) == [5, 5]
    # on two devices (or on one device measured with two replicas at once: two lanes) twice as fast
    for pair in (
        [fixed(0.01, device="a"), fixed(0.01, device="b")],
        [fixed(0.01, device="cpu0", lanes=2), fixed(0.01, device="cpu0", lanes=2)],
    ):
        out = simulate(arrivals, np.ones(10, np.int64), pair, NO_WAIT)
        assert out.end_s.max() == pytest.approx(0.05)


def test_the_gateway_is_a_single_server_in_arrival_order() -> None:
    from kcloud.twin.sim import gateway

    arrivals = poisson(500.0, 20_000)
    leaves = gateway(arrivals, 0.0015)
    # the closed form agrees with a single replica that computes one request at a time
    one_at_a_time = simulate(arrivals, np.ones(len(arrivals), np.int64), [fixed(0.0015)], NO_WAIT)
    np.testing.assert_allclose(leaves, one_at_a_time.end_s, rtol=0, atol=1e-9)
    assert (np.diff(leaves) >= 0).all() and (leaves >= arrivals + 0.0015 - 1e-12).all()
    # requests then reach the router when they leave it, and their latency still counts from arrival
    out = simulate(arrivals, np.ones(len(arrivals), np.int64), [fixed(0.001)], NO_WAIT, ready_s=leaves)
    assert (out.end_s - arrivals >= leaves - arrivals + 0.001 - 1e-9).all()
    with pytest.raises(ValueError, match="ready times"):
        simulate(arrivals, np.ones(len(arrivals), np.int64), [fixed(0.001)], NO_WAIT, ready_s=leaves[::-1])


def test_a_request_arriving_in_a_gateway_stall_enters_at_its_end() -> None:
    from kcloud.twin.sim import Pauses, gateway

    pauses = Pauses(np.array([1.0, 3.0]), np.array([1.5, 3.2]))
    arrivals = np.array([0.5, 1.0, 1.2, 1.4, 2.0, 3.1])
    # the three that arrive in the first stall leave its end one after another, 10 ms apart
    np.testing.assert_allclose(gateway(arrivals, 0.01, pauses), [0.51, 1.51, 1.52, 1.53, 2.01, 3.21])
    np.testing.assert_allclose(pauses.defer(np.array([0.9, 1.0, 1.5, np.nan])), [0.9, 1.5, 1.5, np.nan])
    none = Pauses.drawn(100.0, 0.01, 0.001, np.random.default_rng(4))  # a run too short for any stall
    assert not len(none.start_s) and (gateway(arrivals, 0.0, none) == arrivals).all()


def test_drawn_stalls_have_the_asked_rate_and_length() -> None:
    from kcloud.twin.sim import Pauses

    pauses = Pauses.drawn(2.0, 0.05, 20_000.0, np.random.default_rng(1))
    lengths = pauses.end_s - pauses.start_s
    assert (np.diff(pauses.start_s) > lengths[:-1]).all()  # apart, ascending
    assert pauses.start_s[-1] < 20_000.0 and len(pauses.start_s) == pytest.approx(20_000 / 2.05, rel=0.05)
    assert lengths.mean() == pytest.approx(0.05, rel=0.05)
    with pytest.raises(ValueError, match="pauses need"):
        Pauses.drawn(0.0, 0.05, 10.0, np.random.default_rng(1))


def test_a_client_over_its_open_requests_cap_is_answered_at_once() -> None:
    from kcloud.twin.sim import admit

    arrivals = np.array([0.0, 0.001, 0.002, 0.003, 0.5])
    # the gateway takes 0.1 s a request: the third and fourth find two still waiting, and are refused
    leaves, refused = admit(arrivals, 0.1, None, 2)
    assert refused.tolist() == [False, False, True, True, False]
    np.testing.assert_allclose(leaves[~refused], [0.1, 0.2, 0.6])
    np.testing.assert_allclose(leaves[refused], arrivals[refused])  # answered when they came
    uncapped, none = admit(arrivals, 0.1, None, None)
    assert not none.any() and np.allclose(uncapped, [0.1, 0.2, 0.3, 0.4, 0.6])
