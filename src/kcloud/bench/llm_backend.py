"""The chat SUT's backends: streamed OpenAI chat completions, to a gateway or to an engine of our own.

One sample is one `POST /v1/chat/completions` with `stream: true`. The answer is read as it
streams (server-sent events): the first chunk that carries generated tokens is the sample's
first token (LoadGen's `FirstTokenComplete`), the usage chunk at the end (`stream_options.
include_usage`) gives the token count LoadGen divides the rest of the time by. vLLM's
`return_token_ids` puts each chunk's token ids in it; accuracy runs also ask for the top-5
log-probabilities with `return_tokens_as_token_ids`, so that alternatives come as ids too.

- `ChatNetworkBackend`: a kcloud gateway (or any OpenAI server that takes vLLM's fields), with
  an API key; what a client of the farm sees.
- `ChatEngineBackend`: an engine replica this SUT starts itself on a local device (the serving
  path's own `EngineReplica`), without the gateway. The engine is a process of its own either
  way, so its requests still cross loopback HTTP: what is left out is the gateway.

The client is aiohttp, for the reason `kcloud.bench.network` gives.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

from kcloud.bench.errors import BenchError
from kcloud.bench.llm_accuracy import TopLogprobs
from kcloud.bench.network import PREFLIGHT_TIMEOUT_S, REQUEST_METRIC, GatewayEnergy, check_url
from kcloud.bench.sut import SUTBackend
from kcloud.devices.device import Device
from kcloud.models.repository import ModelEntry
from kcloud.models.smollm import REFERENCE_TOP_LOGPROBS
from kcloud.serving.engine import EngineReplica, create_engine_replica
from kcloud.serving.replica import WorkRecorder

CHAT_PATH = "/v1/chat/completions"
REQUEST_TIMEOUT_S = 600.0
_TOKEN_ID_PREFIX = "token_id:"


@dataclass(frozen=True)
class ChatSample:
    """One prompt of the query sample library: chat messages and their length in tokens."""

    messages: list[dict[str, str]]
    prompt_tokens: int


@dataclass(frozen=True)
class ChatRequestShape:
    """What every request of a run asks for (greedy in both modes).

    Performance: `max_tokens` with `ignore_eos`, so that every sample generates the same count.
    Accuracy: the reference's `max_new_tokens`, stopping at EOS as the reference did, with the top
    log-probabilities the tie rule reads."""

    max_tokens: int
    ignore_eos: bool
    logprobs: bool

    def body(self, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=REFERENCE_TOP_LOGPROBS, return_tokens_as_token_ids=True)
        return body


@dataclass
class ChatAnswer:
    token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    #: The engine's count (usage chunk); the streamed ids where it sent none.
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    #: `time.perf_counter_ns()` when the first generated token arrived.
    first_token_ns: int | None = None


#: Called once, when the first generated token arrives, with the token ids of that chunk.
FirstToken = Callable[[list[int]], None]


def _token_id(text: str) -> int:
    """`token_id:123` (vLLM's `return_tokens_as_token_ids`) as 123."""
    if not text.startswith(_TOKEN_ID_PREFIX):
        raise ValueError(f"logprob token {text!r} is not a token id (return_tokens_as_token_ids ignored?)")
    return int(text[len(_TOKEN_ID_PREFIX) :])


def read_chunk(chunk: dict[str, Any], answer: ChatAnswer, on_first_token: FirstToken | None) -> None:
    """Fold one streamed chat-completion chunk into `answer`."""
    if "error" in chunk:
        raise RuntimeError(f"the stream carried an error: {str(chunk['error'])[:300]}")
    usage = chunk.get("usage")
    if usage:
        answer.completion_tokens = int(usage.get("completion_tokens") or 0)
        answer.prompt_tokens = usage.get("prompt_tokens")
    for choice in chunk.get("choices") or []:
        ids = [int(t) for t in choice.get("token_ids") or []]
        content = (choice.get("delta") or {}).get("content")
        if answer.first_token_ns is None and (ids or content):
            answer.first_token_ns = time.perf_counter_ns()
            if on_first_token is not None:
                on_first_token(ids)
        answer.token_ids += ids
        for step in (choice.get("logprobs") or {}).get("content") or []:
            answer.top_logprobs.append(
                [[_token_id(t["token"]), float(t["logprob"])] for t in step.get("top_logprobs") or []]
            )
        if choice.get("finish_reason"):
            answer.finish_reason = choice["finish_reason"]


async def _sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The `data:` payloads of a server-sent event stream, whatever the chunking of the bytes."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if buffer.startswith(b"data:"):
        yield buffer[5:].strip()


class ChatBackend(SUTBackend):
    """Streams one chat completion per sample to `base_url`."""

    def __init__(self, entry: ModelEntry, shape: ChatRequestShape, *, max_in_flight: int,
                 served_name: str | None = None) -> None:
        self.entry = entry
        #: The name requests ask for (a deployment's on a gateway; default the model's).
        self.served_name = served_name or entry.name
        self.shape = shape
        self.max_in_flight = max_in_flight
        self.auth_headers: dict[str, str] = {}
        self.client: aiohttp.ClientSession | None = None
        #: Tokens the engine generated for the samples answered since the last reset.
        self.completion_tokens = 0
        self.prompt_tokens = 0

    @property
    @abstractmethod
    def base_url(self) -> str:
        """Where the OpenAI routes are (no trailing slash)."""

    async def _open(self) -> None:
        self.client = aiohttp.ClientSession(
            self.base_url,
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers=self.auth_headers,
        )

    async def _close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def start(self) -> None:
        await self._open()

    async def stop(self) -> None:
        await self._close()

    async def generate(self, sample: ChatSample, on_first_token: FirstToken | None = None) -> ChatAnswer:
        """Stream one completion; `RuntimeError` for anything but a complete stream."""
        assert self.client is not None, "the backend is not started"
        answer = ChatAnswer()
        body = self.shape.body(self.served_name, sample.messages)
        async with self.client.post(CHAT_PATH, json=body) as response:
            if response.status != 200:
                text = (await response.read())[:300].decode("utf-8", "replace")
                raise RuntimeError(f"HTTP {response.status}: {text}")
            done = False
            async for data in _sse_data(response):
                if data == b"[DONE]":
                    done = True
                    break
                read_chunk(json.loads(data), answer, on_first_token)
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        if not answer.completion_tokens:
            answer.completion_tokens = len(answer.token_ids)
        self.completion_tokens += answer.completion_tokens
        self.prompt_tokens += answer.prompt_tokens or sample.prompt_tokens
        return answer

    def reset_stats(self) -> None:
        self.completion_tokens = self.prompt_tokens = 0

    def stats(self) -> dict[str, Any]:
        return {"completion_tokens": self.completion_tokens, "prompt_tokens": self.prompt_tokens}


class ChatNetworkBackend(GatewayEnergy, ChatBackend):
    kind = "network"
    serving_metric = REQUEST_METRIC

    def __init__(
        self,
        url: str,
        entry: ModelEntry,
        shape: ChatRequestShape,
        *,
        max_in_flight: int,
        api_key: str | None = None,
        served_name: str | None = None,
    ) -> None:
        super().__init__(entry, shape, max_in_flight=max_in_flight, served_name=served_name)
        self.url = check_url(url)
        self.auth_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.served: dict[str, Any] = {}

    @property
    def base_url(self) -> str:
        return self.url

    def preflight(self) -> None:
        """The gateway answers, takes the key and serves this model as a generative one."""
        try:
            with httpx.Client(
                base_url=self.url, timeout=PREFLIGHT_TIMEOUT_S, trust_env=False, headers=self.auth_headers
            ) as client:
                models = client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise BenchError(f"gateway {self.url} is unreachable: {type(exc).__name__}: {exc}") from None
        if models.status_code == 401:
            hint = "the key was refused" if self.auth_headers else "pass --api-key or set $KCLOUD_API_KEY"
            raise BenchError(f"gateway {self.url} requires an API key (GET /v1/models answered 401): {hint}")
        if models.status_code != 200:
            raise BenchError(f"gateway {self.url}: GET /v1/models answered {models.status_code}")
        try:
            cards = {card["id"]: card for card in models.json()["data"]}
        except (ValueError, KeyError, TypeError):
            raise BenchError(f"gateway {self.url}: GET /v1/models is not an OpenAI model list") from None
        card = cards.get(self.served_name)
        if card is None:
            listed = ", ".join(sorted(cards)) or "none"
            raise BenchError(
                f"gateway {self.url} does not serve model {self.served_name!r} to this key "
                f"(it lists: {listed})"
            )
        if card.get("context_length") is None:
            raise BenchError(
                f"gateway {self.url} serves {self.served_name!r} as a tensor model, not a generative one "
                "(a different model under this name)"
            )
        self.served = card

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "protocol": "OpenAI chat completions, streamed (server-sent events)",
            "served_name": self.served_name,
            "max_in_flight": self.max_in_flight,
            "server": {"model": self.served},
            "client": f"aiohttp {aiohttp.__version__}",
        }


class ChatEngineBackend(ChatBackend):
    """An engine replica of the model on a local device, started by the SUT and stopped with it."""

    kind = "in-process"

    def __init__(
        self,
        entry: ModelEntry,
        device: Device,
        shape: ChatRequestShape,
        *,
        max_in_flight: int,
        emulation: WorkRecorder | None = None,
    ) -> None:
        super().__init__(entry, shape, max_in_flight=max_in_flight)
        self.device = device
        # built now so that a device no engine runtime serves fails before anything starts
        self.replica: EngineReplica = create_engine_replica(
            entry, device, emulation=emulation if device.emulated else None
        )

    @property
    def base_url(self) -> str:
        return self.replica.base_url

    async def start(self) -> None:
        await self.replica.start()
        await self._open()

    async def stop(self) -> None:
        await self._close()
        await self.replica.stop()

    async def generate(self, sample: ChatSample, on_first_token: FirstToken | None = None) -> ChatAnswer:
        # as the gateway does: the replica counts the request, and an emulated device is given its
        # modelled work for the tokens the engine reports (its energy counter follows from that)
        budget = sample.prompt_tokens + self.shape.max_tokens
        self.replica.begin(budget)
        answer: ChatAnswer | None = None
        try:
            answer = await super().generate(sample, on_first_token)
            return answer
        finally:
            self.replica.end(
                budget,
                prompt_tokens=(answer.prompt_tokens or sample.prompt_tokens) if answer else 0,
                completion_tokens=answer.completion_tokens if answer else 0,
            )

    def describe(self) -> dict[str, Any]:
        from kcloud.bench.environment import device_snapshot

        replica = self.replica
        return {
            "kind": self.kind,
            "device": device_snapshot(self.device),
            "engine": replica.runtime.name,
            "replica": replica.id,
            "engine_log": replica.process.log_where,
            "protocol": "OpenAI chat completions, streamed, straight to the engine (no gateway)",
            "max_in_flight": self.max_in_flight,
            "replicas": 1,
            "computes_on": "host CPU (emulated device)" if self.device.emulated else self.device.uid,
        }

    def metered_devices(self) -> tuple[list[Device], str | None]:
        return [self.device], None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "engine_start_seconds": self.replica.start_seconds}
