"""Test settings for one LoadGen run: MLPerf's rules first, then a config file, then flags.

The defaults are not ours: `TestSettings.FromConfig(..., conf_type=0)` loads the `mlperf.conf`
compiled into LoadGen itself (600 s minimum duration in every scenario, MLPerf's seeds, the
MultiStream 662-query floor, the Server latency bound), so a run without overrides follows the
MLPerf rules of the installed LoadGen version. `--quick` then shortens the run for tests, still
going fully through LoadGen. A TOML file can hold the overrides:

```toml
[settings]          # every scenario
min_duration_s = 60
seed = 7

[Offline]           # one scenario; wins over [settings]
target_qps = 800

[Server]
target_qps = 300
latency_bound_ms = 50
ttft_ms = 2000      # chat models: LoadGen's token-latency constraints
tpot_ms = 100
```

Flags win over the file. Every value is validated before LoadGen starts. The chat settings
(`CHAT_SETTINGS`) mean something for chat models only; `kcloud.bench.llm_run` checks them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import mlperf_loadgen as lg
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from kcloud.bench.errors import BenchError

Scenario = Literal["SingleStream", "MultiStream", "Server", "Offline"]
Mode = Literal["performance", "accuracy"]
SCENARIOS: tuple[str, ...] = get_args(Scenario)
MODES: tuple[str, ...] = get_args(Mode)

#: Settings that mean something only in some scenarios (LoadGen ignores them elsewhere).
_ONLY_IN: dict[str, tuple[str, ...]] = {
    "target_qps": ("Offline", "Server"),
    "latency_bound_ms": ("Server",),
    "expected_latency_ms": ("SingleStream", "MultiStream"),
    "samples_per_query": ("MultiStream",),
    "ttft_ms": ("Server",),
    "tpot_ms": ("Server",),
}
#: Settings of chat models only (LoadGen's token-latency mode and the greedy accuracy gate).
CHAT_SETTINGS: tuple[str, ...] = ("max_tokens", "ttft_ms", "tpot_ms", "tie_margin_nats")

#: `--quick`: long enough for LoadGen to schedule and judge a run, short enough for a test.
QUICK: dict[str, Any] = {"min_duration_s": 1.0, "max_duration_s": 20.0}
QUICK_MIN_QUERIES: dict[str, int] = {"SingleStream": 64, "MultiStream": 16, "Server": 64, "Offline": 64}


class BenchSettings(BaseModel):
    """Overrides of LoadGen's MLPerf defaults; `None` keeps LoadGen's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_qps: float | None = Field(None, gt=0, description="Offline expected / Server target QPS")
    latency_bound_ms: float | None = Field(None, gt=0, description="Server latency bound")
    expected_latency_ms: float | None = Field(None, gt=0, description="SingleStream/MultiStream hint")
    min_duration_s: float | None = Field(None, ge=0)
    max_duration_s: float | None = Field(None, ge=0, description="0 = no limit")
    min_query_count: int | None = Field(None, ge=1)
    max_query_count: int | None = Field(None, ge=0, description="0 = no limit")
    samples_per_query: int | None = Field(None, ge=1, description="MultiStream samples per query")
    seed: int | None = Field(None, ge=0, lt=2**64, description="derives LoadGen's three RNG seeds")
    max_in_flight: int | None = Field(None, ge=1, description="samples the SUT keeps in flight at most")
    # chat models only; LoadGen's TPOT is (last - first token) / (tokens - 1), so at least 2 tokens
    max_tokens: int | None = Field(None, ge=2, description="tokens generated per sample (performance)")
    ttft_ms: float | None = Field(None, gt=0, description="Server time-to-first-token bound")
    tpot_ms: float | None = Field(None, gt=0, description="Server time-per-output-token bound")
    tie_margin_nats: float | None = Field(None, ge=0, description="accuracy: near-tie margin")

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BenchConfigFile(BaseModel):
    """The TOML file's shape: `[settings]` for all scenarios, then one table per scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: BenchSettings = BenchSettings()
    SingleStream: BenchSettings = BenchSettings()
    MultiStream: BenchSettings = BenchSettings()
    Server: BenchSettings = BenchSettings()
    Offline: BenchSettings = BenchSettings()
    _source: str = PrivateAttr(default="config file")


def canonical_scenario(name: str) -> str:
    """A scenario as LoadGen spells it, whatever the case it was typed in (`server` is `Server`);
    an unknown name is returned as given, for the check that names the choices."""
    return next((s for s in SCENARIOS if s.lower() == name.lower()), name)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _problems(error: ValidationError, name_of: Any) -> str:
    lines = []
    for item in error.errors():
        key = name_of(item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message} (got {item['input']!r})")
    return "; ".join(lines)


def settings_from_flags(values: dict[str, Any]) -> BenchSettings:
    """Validate flag values; errors name the flag (`--target-qps: Input should be greater than 0`)."""
    try:
        return BenchSettings.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise BenchError(_problems(exc, lambda loc: _flag(str(loc[0])))) from None


def load_config_file(path: Path) -> BenchConfigFile:
    """Read a bench TOML file; errors name the file, the table and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"config file {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"config file {path}: not valid TOML ({exc})") from None
    try:
        file = BenchConfigFile.model_validate(data)
    except ValidationError as exc:
        detail = _problems(
            exc, lambda loc: "[" + "].".join(str(p) for p in loc[:2]) if len(loc) > 1 else f"[{loc[0]}]"
        )
        raise BenchError(f"config file {path}: {detail}") from None
    file._source = f"config file {path}"
    return file


def _check_applies(values: dict[str, Any], scenario: str, name_of: Any) -> None:
    for key in values:
        scenarios = _ONLY_IN.get(key)
        if scenarios and scenario not in scenarios:
            raise BenchError(f"{name_of(key)} applies to {' and '.join(scenarios)}, not {scenario}")


def merge_settings(
    scenario: str, *, quick: bool, file: BenchConfigFile | None, flags: BenchSettings
) -> BenchSettings:
    """Quick profile < file `[settings]` < file `[<scenario>]` < flags.

    A setting that cannot apply to the scenario is an error where the user named it for this
    scenario (a flag, a `[<scenario>]` key) and ignored in the shared `[settings]` table.
    """
    if scenario not in SCENARIOS:
        raise BenchError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    merged: dict[str, Any] = {}
    if quick:
        merged.update(QUICK, min_query_count=QUICK_MIN_QUERIES[scenario])
    if file is not None:
        shared = {
            k: v for k, v in file.settings.given().items() if k not in _ONLY_IN or scenario in _ONLY_IN[k]
        }
        merged.update(shared)
        own = getattr(file, scenario).given()
        _check_applies(own, scenario, lambda key: f"{file._source}: [{scenario}] {key}")
        merged.update(own)
    given = flags.given()
    _check_applies(given, scenario, _flag)
    merged.update(given)
    return BenchSettings.model_validate(merged)


def derived_seeds(seed: int) -> tuple[int, int, int]:
    """LoadGen's qsl, sample-index and schedule seeds from one user seed (distinct, repeatable)."""
    qsl, index, schedule = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    return int(qsl), int(index), int(schedule)


def to_loadgen(model: str, scenario: str, mode: str, settings: BenchSettings) -> lg.TestSettings:
    """Build LoadGen's `TestSettings`: its own mlperf.conf for `model`, then our overrides."""
    if scenario not in SCENARIOS:
        raise BenchError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    ts = lg.TestSettings()
    # conf_type 0: only the mlperf.conf built into LoadGen (no user.conf); the path is unused.
    if ts.FromConfig("", model, scenario, 0) != 0:
        raise BenchError(f"LoadGen could not load its MLPerf rules for {model}/{scenario}")
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    s = settings
    if s.min_duration_s is not None:
        ts.min_duration_ms = round(s.min_duration_s * 1000)
    if s.max_duration_s is not None:
        ts.max_duration_ms = round(s.max_duration_s * 1000)
    if s.min_query_count is not None:
        ts.min_query_count = s.min_query_count
    if s.max_query_count is not None:
        ts.max_query_count = s.max_query_count
    if s.target_qps is not None:
        if scenario == "Offline":
            ts.offline_expected_qps = s.target_qps
        elif scenario == "Server":
            ts.server_target_qps = s.target_qps
    if s.latency_bound_ms is not None and scenario == "Server":
        ts.server_target_latency_ns = round(s.latency_bound_ms * 1e6)
    if s.expected_latency_ms is not None:
        if scenario == "SingleStream":
            ts.single_stream_expected_latency_ns = round(s.expected_latency_ms * 1e6)
        elif scenario == "MultiStream":
            ts.multi_stream_expected_latency_ns = round(s.expected_latency_ms * 1e6)
    if s.samples_per_query is not None and scenario == "MultiStream":
        ts.multi_stream_samples_per_query = s.samples_per_query
    if s.seed is not None:
        ts.qsl_rng_seed, ts.sample_index_rng_seed, ts.schedule_rng_seed = derived_seeds(s.seed)
    return ts


def describe_loadgen_settings(ts: lg.TestSettings) -> dict[str, Any]:
    """The settings handed to LoadGen, for `result.json` (LoadGen's detail log has the effective ones)."""
    out: dict[str, Any] = {}
    for name in dir(ts):
        if name.startswith("_") or name == "FromConfig":
            continue
        value = getattr(ts, name)
        out[name] = value.name if hasattr(value, "name") else value
    return out
