"""Whether a run followed MLPerf's rules, beside LoadGen's verdict on it.

LoadGen's "VALID" says its own checks passed for the settings it was given: enough queries for
the duration asked, the latency bound met at the percentile asked. MLPerf's rules fix those
settings: at least 600 s, the official seeds, the benchmark's latency bound. A 20 s run with a
latency bound of our choosing can be VALID and still not an MLPerf-conformant result, so every
result states both. The rules are the `mlperf.conf` compiled into the installed LoadGen, for the
model and scenario (a model it does not name gets its defaults for any model, and the record
says so).
"""

from __future__ import annotations

from typing import Any

import mlperf_loadgen as lg

#: A name no mlperf.conf entry has, to tell a model's own entry from the defaults for any model.
_UNNAMED = "kcloud-model-not-in-mlperf-conf"


def _rules(model: str, scenario: str) -> lg.TestSettings:
    ts = lg.TestSettings()
    ts.FromConfig("", model, scenario, 0)  # conf_type 0: LoadGen's own mlperf.conf only
    return ts


def _seconds(ns_or_ms: float, unit: float) -> str:
    return f"{ns_or_ms / unit:g}"


def mlperf_rules(model: str, scenario: str, mode: str, ts: lg.TestSettings) -> dict[str, Any]:
    """`{"followed": bool | None, "departures": [...], "rules": "..."}` for the settings `ts`."""
    if mode != "performance":
        return {
            "followed": None,
            "departures": [],
            "rules": "MLPerf's duration, query-count, seed and latency rules apply to performance runs",
        }
    rules, generic = _rules(model, scenario), _rules(_UNNAMED, scenario)
    whose = (
        f"mlperf.conf's defaults for models it does not name ({model} is not an MLPerf benchmark)"
        if rules.server_target_latency_ns == generic.server_target_latency_ns
        and rules.min_query_count == generic.min_query_count
        else f"mlperf.conf's entry for {model}"
    )
    out: list[str] = []
    if ts.min_duration_ms < rules.min_duration_ms:
        out.append(
            f"min duration {_seconds(ts.min_duration_ms, 1e3)} s, below the rules' "
            f"{_seconds(rules.min_duration_ms, 1e3)} s"
        )
    if ts.min_query_count < rules.min_query_count:
        out.append(f"min query count {ts.min_query_count}, below the rules' {rules.min_query_count}")
    if ts.max_duration_ms != rules.max_duration_ms:
        out.append(
            f"max duration {_seconds(ts.max_duration_ms, 1e3)} s (the rules set no limit): "
            "LoadGen may end the run early"
        )
    if ts.max_query_count != rules.max_query_count:
        out.append(f"max query count {ts.max_query_count} (the rules set no limit)")
    if scenario == "Server" and ts.server_target_latency_ns != rules.server_target_latency_ns:
        out.append(
            f"latency bound {_seconds(ts.server_target_latency_ns, 1e6)} ms, not the rules' "
            f"{_seconds(rules.server_target_latency_ns, 1e6)} ms"
        )
    if scenario == "Server" and ts.use_token_latencies:
        for name, label in (("ttft_latency", "TTFT"), ("tpot_latency", "TPOT")):
            if getattr(ts, name) != getattr(rules, name):
                out.append(
                    f"{label} bound {_seconds(getattr(ts, name), 1e6)} ms, not the rules' "
                    f"{_seconds(getattr(rules, name), 1e6)} ms"
                )
    per_query = ts.multi_stream_samples_per_query
    if scenario == "MultiStream" and per_query != rules.multi_stream_samples_per_query:
        out.append(
            f"{ts.multi_stream_samples_per_query} samples per query, not the rules' "
            f"{rules.multi_stream_samples_per_query}"
        )
    seeds = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")
    if any(getattr(ts, seed) != getattr(rules, seed) for seed in seeds):
        out.append("seeds of our own (--seed), not MLPerf's official seeds")
    return {"followed": not out, "departures": out, "rules": f"LoadGen's {whose}, {scenario}"}


def rules_text(rules: dict[str, Any] | None) -> str:
    """One line for terminals and reports: followed, or not and why."""
    if not rules or rules.get("followed") is None:
        return "n/a (accuracy run)" if rules else "not recorded"
    if rules["followed"]:
        return "followed"
    return "not followed: " + "; ".join(rules["departures"])
