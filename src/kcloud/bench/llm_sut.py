"""The LoadGen side of a chat SUT: token latencies (`FirstTokenComplete`) and token counts.

In LoadGen's token-latency mode (`use_token_latencies`) every sample is reported twice: when its
first token arrives (`FirstTokenComplete`, LoadGen's TTFT) and when it completes, with the
number of tokens it generated (`QuerySampleResponse(id, data, size, n_tokens)`; LoadGen's TPOT
is (completion - first token) / (n_tokens - 1)). LoadGen reads the first-token time of every
sample it completes in Server (not in Offline, where it reports tokens per second only), so a
sample that failed before its first token still reports one, just before it completes.

What a sample answers with (the bytes of its response) is what the accuracy log keeps: the
engine's output token ids as int32 in performance runs (MLPerf's LLM convention), and in
accuracy runs the token ids with the engine's top log-probabilities (`EngineOutput`), which the
tie rule of `kcloud.bench.llm_accuracy` needs.

The SUT also keeps its own per-sample first-token time and token count (`ChatTimes`), so that
Offline runs, where LoadGen logs no token latencies, still say what the clients saw.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import mlperf_loadgen as lg
import numpy as np

from kcloud.bench.calibrate import Calibration, CalibrationError
from kcloud.bench.llm_accuracy import EngineOutput
from kcloud.bench.llm_backend import ChatAnswer, ChatBackend, ChatSample
from kcloud.bench.sut import AsyncSUT, SampleTimes

#: Samples the warm-up sends one at a time (the engine's first request compiles and allocates).
WARMUP_SAMPLES = 2


@dataclass
class ChatTimes(SampleTimes):
    """Besides `SampleTimes`: per completed sample, its issue-to-first-token time (-1: none) and
    its generated tokens (0: failed)."""

    first_token_ns: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class ChatLoadGenSUT(AsyncSUT):
    def __init__(
        self,
        backend: ChatBackend,
        samples: list[ChatSample],
        *,
        max_in_flight: int,
        first_token: bool,
        accuracy: bool,
    ) -> None:
        super().__init__(backend, max_in_flight=max_in_flight)
        self.backend: ChatBackend = backend
        self.samples = samples
        #: Report first tokens to LoadGen (token-latency mode, not Offline).
        self.first_token = first_token
        #: Answer with `EngineOutput` bytes (accuracy) rather than int32 token ids.
        self.accuracy = accuracy
        self.times: ChatTimes

    def _new_times(self) -> ChatTimes:
        return ChatTimes()

    async def _answer(self, response_id: int, index: int, issued_ns: int) -> None:
        assert self._semaphore is not None
        reported = False

        def first(token_ids: list[int]) -> None:
            nonlocal reported
            if self.first_token:
                data = np.asarray(token_ids[:1], dtype=np.int32)
                lg.FirstTokenComplete([lg.QuerySampleResponse(response_id, data.ctypes.data, data.nbytes)])
                reported = True

        answer: ChatAnswer | None = None
        async with self._semaphore:
            try:
                answer = await self.backend.generate(self.samples[index], first)
            except Exception as exc:  # LoadGen must hear back about every sample, even a failed one
                self._failed(index, exc)
        if self.first_token and not reported:
            lg.FirstTokenComplete([lg.QuerySampleResponse(response_id, 0, 0)])
        done_ns = time.perf_counter_ns()
        if answer is None:
            # n_tokens 0: LoadGen logs an error for the sample, as it should
            lg.QuerySamplesComplete([lg.QuerySampleResponse(response_id, 0, 0, 0)])
        else:
            if self.accuracy:
                payload = EngineOutput(answer.token_ids, answer.top_logprobs).to_bytes()
                data = np.frombuffer(payload, dtype=np.uint8)
            else:
                data = np.asarray(answer.token_ids, dtype=np.int32)
            response = lg.QuerySampleResponse(
                response_id, data.ctypes.data, data.nbytes, answer.completion_tokens
            )
            # LoadGen copies the bytes before this returns; `data` lives until then
            lg.QuerySamplesComplete([response])
        self._record(issued_ns, done_ns)
        with self._lock:
            first_ns = answer.first_token_ns if answer is not None else None
            self.times.first_token_ns.append(first_ns - issued_ns if first_ns is not None else -1)
            self.times.tokens.append(answer.completion_tokens if answer is not None else 0)


async def calibrate_chat(
    backend: ChatBackend,
    samples: list[ChatSample],
    scenario: str,
    *,
    mode: str,
    budget_s: float,
    max_in_flight: int,
) -> Calibration:
    """Warm the engine up, then measure samples per second with `max_in_flight` in flight.

    Like `kcloud.bench.calibrate` for tensor models, this only sets LoadGen's scheduling hint
    (Offline's expected QPS, Server's target QPS) where the user gave none. A generation takes
    long, so the measure is whole waves of concurrent samples, at least one."""
    result = Calibration(budget_s=budget_s)
    started = time.perf_counter()
    count = 0
    for i in range(WARMUP_SAMPLES):
        try:
            answer = await backend.generate(samples[i % len(samples)])
        except Exception as exc:
            raise CalibrationError(
                f"the SUT failed on a warm-up sample: {type(exc).__name__}: {exc}"
            ) from None
        count += 1
        if not answer.token_ids and not answer.completion_tokens:
            raise CalibrationError("the SUT's warm-up answer has no generated tokens")
    if mode != "performance" and scenario != "Server":
        result.samples, result.seconds = count, time.perf_counter() - started
        return result
    wave = max(1, min(max_in_flight, 2 * len(samples)))
    done = 0
    t = time.perf_counter()
    deadline = t + budget_s
    while done == 0 or time.perf_counter() < deadline:
        batch = [samples[(count + j) % len(samples)] for j in range(wave)]
        try:
            await asyncio.gather(*(backend.generate(sample) for sample in batch))
        except Exception as exc:
            raise CalibrationError(f"the SUT failed while warming up: {type(exc).__name__}: {exc}") from None
        count += wave
        done += wave
    result.throughput_sps = done / (time.perf_counter() - t)
    result.samples, result.seconds = count, time.perf_counter() - started
    return result
