"""Whether a run's settings followed MLPerf's rules, beside LoadGen's VALID (which only says its
own checks passed for the settings it was given). Rules: the mlperf.conf compiled into LoadGen."""

from __future__ import annotations

from kcloud.bench.rules import mlperf_rules, rules_text
from kcloud.bench.settings import QUICK, BenchSettings, to_loadgen


def _rules(model: str, scenario: str, mode: str = "performance", **settings):
    ts = to_loadgen(model, scenario, mode, BenchSettings(**settings))
    return mlperf_rules(model, scenario, mode, ts)


def test_defaults_follow_the_rules_and_say_whose_rules():
    own = _rules("bert", "Server")
    assert own == {
        "followed": True,
        "departures": [],
        "rules": "LoadGen's mlperf.conf's entry for bert, Server",
    }
    generic = _rules("all-MiniLM-L6-v2", "Offline")
    assert generic["followed"] is True
    assert (
        "defaults for models it does not name (all-MiniLM-L6-v2 is not an MLPerf benchmark)"
        in generic["rules"]
    )
    assert rules_text(generic) == "followed"


def test_every_departure_is_named():
    departures = _rules(
        "all-MiniLM-L6-v2",
        "Server",
        min_duration_s=20,
        latency_bound_ms=250,
        seed=7,
        min_query_count=10,
        max_query_count=5000,
    )["departures"]
    assert departures == [
        "min duration 20 s, below the rules' 600 s",
        "min query count 10, below the rules' 100",
        "max query count 5000 (the rules set no limit)",
        "latency bound 250 ms, not the rules' 10 ms",
        "seeds of our own (--seed), not MLPerf's official seeds",
    ]
    quick = _rules("digits-cnn", "SingleStream", **QUICK)
    assert rules_text(quick) == (
        "not followed: min duration 1 s, below the rules' 600 s; "
        "max duration 20 s (the rules set no limit): LoadGen may end the run early"
    )
    assert _rules("digits-cnn", "MultiStream", samples_per_query=4)["departures"] == [
        "4 samples per query, not the rules' 8"
    ]


def test_accuracy_runs_and_old_results():
    accuracy = _rules("digits-cnn", "Offline", mode="accuracy", min_duration_s=1)
    assert accuracy["followed"] is None and rules_text(accuracy) == "n/a (accuracy run)"
    assert rules_text(None) == "not recorded"
