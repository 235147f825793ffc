"""Warm-up and a first measure of the SUT, before LoadGen starts.

MLPerf leaves LoadGen's scheduling hints (Offline's expected QPS, the Server target QPS, the
expected single- and multi-stream latency) to the submitter's `user.conf`. A hint that is far
off makes the run too short (INVALID: min duration) or needlessly long, so where the user gave
none we measure the SUT for a moment through the same backend and take the hint from it. The
measurement only sets LoadGen's settings; every reported figure comes from LoadGen's own run.
Both the measurement and the settings it chose are written to `result.json`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from kcloud.bench.settings import BenchSettings
from kcloud.bench.sut import Backend, Inputs

#: Server target QPS as a share of the saturated throughput: a Server run is judged on tail
#: latency, which rises steeply near saturation.
SERVER_LOAD_FRACTION = 0.5
#: Offline expected QPS as a multiple of the measured throughput, by calibration length. Too
#: low a hint makes the run end before the minimum duration (INVALID); too high only makes it
#: longer. A short (quick) warm-up underestimates a SUT that keeps warming up (connection pools,
#: caches), so it gets more headroom.
OFFLINE_HEADROOM = {True: 2.0, False: 1.3}
WARMUP_SAMPLES = 3


class CalibrationError(RuntimeError):
    """The SUT failed on the warm-up samples: LoadGen would only record failures."""


@dataclass
class Calibration:
    budget_s: float
    samples: int = 0
    seconds: float = 0.0
    single_latency_ms: float | None = None
    query_latency_ms: float | None = None
    throughput_sps: float | None = None
    chose: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def calibrate(
    backend: Backend,
    samples: list[Inputs],
    scenario: str,
    *,
    mode: str,
    budget_s: float,
    samples_per_query: int,
    max_in_flight: int,
    output: str,
) -> Calibration:
    """Warm the SUT up, then measure what the scenario's hint needs.

    The warm-up samples must come back with `output` (the one LoadGen's accuracy log carries);
    a SUT that fails them raises `CalibrationError` before LoadGen starts."""
    result = Calibration(budget_s=budget_s)
    started = time.perf_counter()
    count = 0

    def sample() -> Inputs:
        nonlocal count
        count += 1
        return samples[count % len(samples)]

    for _ in range(WARMUP_SAMPLES):
        try:
            answer = await backend.infer(sample())
        except Exception as exc:
            raise CalibrationError(
                f"the SUT failed on a warm-up sample: {type(exc).__name__}: {exc}"
            ) from None
        if output not in answer:
            raise CalibrationError(
                f"the SUT's answer has outputs {sorted(answer)}, not `{output}` "
                "(the output the accuracy script scores)"
            )
    # accuracy runs need no hint, except Server's arrival rate (else LoadGen's default of 1 QPS)
    if mode != "performance" and scenario != "Server":
        result.samples, result.seconds = count, time.perf_counter() - started
        return result

    deadline = time.perf_counter() + budget_s
    if scenario == "SingleStream":
        latencies = []
        while time.perf_counter() < deadline or len(latencies) < 3:
            t = time.perf_counter()
            await backend.infer(sample())
            latencies.append(time.perf_counter() - t)
        result.single_latency_ms = statistics.median(latencies) * 1000
    elif scenario == "MultiStream":
        latencies = []
        while time.perf_counter() < deadline or len(latencies) < 3:
            t = time.perf_counter()
            await asyncio.gather(*(backend.infer(sample()) for _ in range(samples_per_query)))
            latencies.append(time.perf_counter() - t)
        result.query_latency_ms = statistics.median(latencies) * 1000
    else:
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await backend.infer(sample())
                done += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max_in_flight)))
        result.throughput_sps = done / (time.perf_counter() - t)
    result.samples, result.seconds = count, time.perf_counter() - started
    return result


def apply_calibration(
    scenario: str, settings: BenchSettings, calibration: Calibration, *, quick: bool
) -> BenchSettings:
    """Fill the scenario's scheduling hint from the measurement, where the user gave none."""
    chose: dict[str, float] = {}
    if scenario in ("Offline", "Server") and settings.target_qps is None and calibration.throughput_sps:
        share = OFFLINE_HEADROOM[quick] if scenario == "Offline" else SERVER_LOAD_FRACTION
        chose["target_qps"] = round(calibration.throughput_sps * share, 3)
    elif (
        scenario == "SingleStream" and settings.expected_latency_ms is None and calibration.single_latency_ms
    ):
        chose["expected_latency_ms"] = calibration.single_latency_ms
    elif scenario == "MultiStream" and settings.expected_latency_ms is None and calibration.query_latency_ms:
        chose["expected_latency_ms"] = calibration.query_latency_ms
    calibration.chose = chose or None
    return settings.model_copy(update=chose) if chose else settings
