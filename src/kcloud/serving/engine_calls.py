"""Sending a `GenerationCall` to an engine replica, and relaying its answer.

Streams are relayed event by event as the engine writes them (server-sent events, never
buffered whole): each complete `data: ...` event is passed on unchanged the moment it arrives.
Two events are looked at on the way: the usage chunk (`"choices":[]`), which gives the tokens
to meter and is dropped again when the client did not ask for it, and the end.

When the client goes away mid-stream the server cancels the relay; closing the engine response
closes its connection, and the engine aborts the request (vLLM does on disconnect), so a
departed client stops costing device time. When the engine dies mid-stream the client gets an
OpenAI error event and `[DONE]` instead of a hung connection; the replica's watcher reports the
death and the reconciler replaces the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import orjson

from kcloud.serving.engine import EngineReplica
from kcloud.serving.errors import ReplicaDiedError
from kcloud.serving.generation import GenerationCall

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}
_USAGE_MARK = b'"choices":[]'
_DONE = b"data: [DONE]\n\n"


@dataclass
class Answer:
    """An engine's whole answer to a non-streamed call (or its refusal of a streamed one)."""

    status: int
    body: bytes
    content_type: str


class StreamAnswer:
    """An open stream: iterate `events()` to relay it, and `close()` it whatever happens (the
    gateway's response does, even when the client left before the first event): that ends the
    engine request and the replica's count of it exactly once."""

    def __init__(self, replica: EngineReplica, call: GenerationCall, response: httpx.Response) -> None:
        self.replica = replica
        self.call = call
        self.response = response
        self._closed = False
        #: Events relayed that carried choices: about one token each (engines stream token by token).
        self.chunks = 0
        #: Called once when the stream is closed (the router's load meter counts it answered then).
        self.on_close: list[Callable[[], None]] = []
        #: Called once with the gateway's own part of the first token, in seconds: from the request's
        #: arrival to its sending, plus from the engine's first event to its relay to the client.
        self.on_first_token: list[Callable[[float], None]] = []

    async def close(self) -> None:
        """End the engine request (once). A stream that ended without the engine's usage chunk (the
        client left, the engine died) is charged its prompt and the chunks relayed, so leaving just
        before the end does not make a generation free."""
        if self._closed:
            return
        self._closed = True
        await self.response.aclose()
        if self.call.usage_seen is None:
            self.call.usage(self.call.prompt_tokens, self.chunks)
        prompt, completion = self.call.usage_seen or (0, 0)
        self.replica.end(self.call.tokens, prompt_tokens=prompt, completion_tokens=completion)
        for closed in self.on_close:
            closed()

    async def events(self) -> AsyncIterator[bytes]:
        pending = b""
        first = True
        try:
            async for piece in self.response.aiter_raw():
                received = time.perf_counter()
                pending += piece
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                ready, pending = pending[:cut + 2], pending[cut + 2:]
                if _USAGE_MARK in ready:
                    ready = _take_usage(ready, self.call)
                    if not ready:
                        continue
                self.chunks += ready.count(b'"choices":[{')
                yield ready  # resumes once the server has handed the bytes to the client's connection
                if first:
                    first = False
                    self._first_token_relayed(received)
            if pending.strip():
                yield pending
        except httpx.TransportError as exc:
            log.warning("replica %s: engine stream broke: %r", self.replica.id, exc)
            yield error_event(f"the engine of replica {self.replica.id} stopped mid-stream ({exc!r}); "
                              "the replica is being replaced: retry the request")
            yield _DONE
        finally:
            await self.close()

    def _first_token_relayed(self, received: float) -> None:
        call = self.call
        if call.arrived_at is None or call.sent_at is None:
            return
        added = (call.sent_at - call.arrived_at) + (time.perf_counter() - received)
        for report in self.on_first_token:
            report(added)


def _usage_of(payload: bytes) -> tuple[int, int] | None:
    try:
        usage = orjson.loads(payload).get("usage") or {}
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def error_event(message: str, *, code: int = 503, kind: str = "server_error") -> bytes:
    """An OpenAI-shaped error as one server-sent event."""
    return b"data: " + orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                               "code": code}}) + b"\n\n"


async def send(replica: EngineReplica, call: GenerationCall) -> Answer | StreamAnswer:
    """Send `call` to `replica`. The replica counts it in flight until the answer is read (or
    the stream ends); usage reaches `call.usage` once known. `ReplicaDiedError` when the
    engine cannot be reached at all (the router then tries another)."""
    replica.begin(call.tokens)
    request = replica.client.build_request("POST", call.path, content=orjson.dumps(call.body), headers=_JSON)
    call.sent_at = time.perf_counter()
    try:
        response = await replica.client.send(request, stream=call.stream)
    except httpx.TransportError as exc:
        replica.end(call.tokens)
        raise ReplicaDiedError(f"the engine of replica {replica.id} did not answer: {exc!r}") from None
    if not call.stream or response.status_code != 200:
        return await _whole(replica, call, response)
    return StreamAnswer(replica, call, response)


async def _whole(replica: EngineReplica, call: GenerationCall, response: httpx.Response) -> Answer:
    prompt = completion = 0
    try:
        body = await response.aread()
        if response.status_code == 200 and (usage := _usage_of(body)) is not None:
            prompt, completion = usage
            call.usage(prompt, completion)
        return Answer(response.status_code, body, response.headers.get("content-type", "application/json"))
    except httpx.TransportError as exc:
        return Answer(503, orjson.dumps({"error": {
            "message": f"engine of replica {replica.id} failed while answering: {exc!r}",
            "type": "server_error", "param": None, "code": 503}}), "application/json")
    finally:
        await response.aclose()
        replica.end(call.tokens, prompt_tokens=prompt, completion_tokens=completion)


def _take_usage(ready: bytes, call: GenerationCall) -> bytes:
    """Meter the usage event among `ready` events; drop it unless the client asked for usage."""
    kept: list[bytes] = []
    for event in ready.split(b"\n\n"):
        if not event:
            continue
        if _USAGE_MARK in event and event.startswith(b"data: "):
            usage = _usage_of(event[6:])
            if usage is not None:
                call.usage(*usage)
            if not call.include_usage:
                continue
        kept.append(event + b"\n\n")
    return b"".join(kept)
