"""`GenerationCall`: one OpenAI chat or completion request, checked and counted before an engine sees it.

The engine would refuse most bad requests itself, but only after it was chosen, queued and
charged for; and a few it would take silently (a field it ignores, a prompt it truncates). So
the gateway checks here, in one place, what the platform promises:

- the body is a JSON object with a `model`; chat `messages` are a non-empty list of objects with
  a known role and text content; a completion's `prompt` is text or token ids;
- every field is one the chosen engine understands (`EngineRuntime.accepted_params`), else 400
  naming it — never a silent drop;
- the prompt, rendered with the model's own chat template and counted with its own tokenizer,
  leaves room for `max_tokens` within the model's context (`Generation.context_length`), else
  400 with both numbers; `max_tokens` ≤ 0 is refused; an absent one becomes
  min(`default_max_tokens`, what the context leaves).

The prompt's token ids ride along for the router (prefix-aware routing, outstanding tokens).
The body the engine gets is the client's, with `model` set to the served name, `max_tokens`
made explicit and, when streaming, `stream_options.include_usage` on so that usage can be
metered; the usage chunk is dropped again when the client did not ask for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kcloud.errors import InvalidRequestError
from kcloud.models.repository import ModelEntry
from kcloud.serving.served import ServedModel

Route = Literal["chat", "completions"]

#: Roles OpenAI's chat API defines ("function" is its deprecated name for "tool").
ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Above this many characters a prompt is tokenised off the event loop.
HEAVY_PROMPT_CHARS = 8000
#: Most completions one request may ask for (`n`): each is a full generation on the engine.
MAX_N = 16
#: Engine fields that are the platform's to set, not a client's: scheduling priority (a tenant
#: would jump the queue), the engine's own request id, and disaggregated-serving transfer state.
WITHHELD_PARAMS: frozenset[str] = frozenset({"priority", "request_id", "kv_transfer_params",
                                             "ec_transfer_params"})

UsageSink = Callable[[int, int], None]


@dataclass
class GenerationCall:
    """A checked request, ready for an engine."""

    route: Route
    #: The model asked for, under the name it is served as (the engine serves it under that name).
    served: ServedModel
    #: The JSON body the engine receives.
    body: dict[str, Any]
    #: The prompt's token ids (the first prompt's, for a batch of completions).
    prompt_ids: list[int]
    #: Prompt tokens of the whole request (every prompt of a batch).
    prompt_tokens: int
    max_tokens: int
    n: int
    stream: bool
    #: The client asked for the usage chunk at the end of its stream.
    include_usage: bool
    #: Called once with (prompt_tokens, completion_tokens) when the engine's usage is known.
    on_usage: list[UsageSink] = field(default_factory=list)
    #: (prompt_tokens, completion_tokens) as the engine reported them, once it has.
    usage_seen: tuple[int, int] | None = None
    #: The request fields the chosen engine takes on this route.
    accepted: frozenset[str] = frozenset()
    #: `time.perf_counter()` when the request reached the gateway, and when it was sent to an engine.
    arrived_at: float | None = None
    sent_at: float | None = None

    def isolate_prefix_cache(self, salt: str) -> None:
        """Salt the engine's prefix cache with `salt` (one per tenant), where the engine takes a
        salt: a cached prompt prefix is then reused only by requests with the same salt, so no
        tenant can tell from a fast first token that another asked the same prefix before. A
        client's own `cache_salt` is replaced."""
        if "cache_salt" in self.accepted:
            self.body["cache_salt"] = salt

    @property
    def tokens(self) -> int:
        """What this request may occupy on an engine: its prompt plus every token it may make."""
        return self.prompt_tokens + self.max_tokens * self.n

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.route == "chat" else "/v1/completions"

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The engine's count of this call's tokens: recorded once, told to every sink."""
        if self.usage_seen is not None:
            return
        self.usage_seen = (prompt_tokens, completion_tokens)
        for sink in self.on_usage:
            sink(prompt_tokens, completion_tokens)


class ChatTokenizer:
    """The model's own tokenizer and chat template (transformers reads them from the checkpoint)."""

    def __init__(self, checkpoint: Path) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # the [llm] extra is missing
            raise InvalidRequestError(
                f"generative models need the `transformers` package (pip install 'kcloud[llm]'): {exc}"
            ) from None
        self._tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.has_chat_template = bool(getattr(self._tokenizer, "chat_template", None))

    def chat_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja2 raises its own errors for messages the template refuses
            raise InvalidRequestError(f"the model's chat template refused these messages: {exc}") from None
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def text_ids(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))


_tokenizers_lock = threading.Lock()
_tokenizers: dict[tuple[Path, str], ChatTokenizer] = {}


def loaded_tokenizer(entry: ModelEntry) -> ChatTokenizer | None:
    """The entry's tokenizer if it is loaded already (a dict look-up, fit for the event loop)."""
    return _tokenizers.get((entry.path, entry.sha256))


def tokenizer_for(entry: ModelEntry) -> ChatTokenizer:
    """The entry's tokenizer, loaded once per checkpoint (keyed by its digest, so a rebuilt
    version is read again). Loading takes ~0.5 s: call it off the event loop. Safe from several
    threads."""
    key = (entry.path, entry.sha256)
    with _tokenizers_lock:
        if key not in _tokenizers:
            _tokenizers[key] = ChatTokenizer(entry.path)
        return _tokenizers[key]


def warm_tokenizer(entry: ModelEntry) -> None:
    """Load the entry's tokenizer and compile its chat template (what a first request would pay)."""
    tokenizer = tokenizer_for(entry)
    if tokenizer.has_chat_template:
        tokenizer.chat_ids([{"role": "user", "content": "hello"}])


def _invalid(message: str, param: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, fields={"param": param} if param else None)


def _check_fields(body: dict[str, Any], accepted: frozenset[str], required: str, engine: str) -> None:
    withheld = sorted(set(body) & WITHHELD_PARAMS)
    if withheld:
        raise _invalid(f"{', '.join(withheld)} {'is' if len(withheld) == 1 else 'are'} set by the platform, "
                       "not by a request", withheld[0])
    unknown = sorted(set(body) - accepted)
    if unknown:
        raise _invalid(f"{engine} does not support the parameter{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(unknown)}; it takes: {', '.join(sorted(accepted - WITHHELD_PARAMS))}",
                       unknown[0])
    if required not in body:
        raise _invalid(f"`{required}` is required", required)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages as OpenAI defines them, text only; `InvalidRequestError` naming the first fault."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("`messages` must be a non-empty list of {role, content} objects", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(f"{where} must be an object with `role` and `content`", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role {role!r} is not a chat role; roles: {', '.join(sorted(ROLES))}",
                           "messages")
        content = message.get("content")
        if content is None:
            if role == "assistant" and message.get("tool_calls"):
                continue
            raise _invalid(f"{where}.content is missing", "messages")
        if isinstance(content, list):
            for part in content:
                text_part = isinstance(part, dict) and part.get("type") == "text"
                if not text_part or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise _invalid(f"{where}.content has a {kind!r} part; this model takes text parts only",
                                   "messages")
        elif not isinstance(content, str):
            raise _invalid(f"{where}.content must be a string or a list of text parts", "messages")
    return messages


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"`{key}` must be an integer, got {value!r}", key)
    if value <= 0:
        raise _invalid(f"`{key}` must be at least 1, got {value}", key)
    return value


def _token_ids(values: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in values)


def _prompts(prompt: Any) -> list[str | list[int]]:
    """A completion's prompt(s): text, a list of texts, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if _token_ids(prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and _token_ids(p) for p in prompt):
            return list(prompt)
    raise _invalid("`prompt` must be a string, a list of strings, or token ids (a list of non-negative "
                   "integers, or a list of such lists), and not empty", "prompt")


def prepare_call(
    route: Route,
    body: Any,
    served: ServedModel,
    accepted: frozenset[str],
    engine: str,
    tokenizer: ChatTokenizer,
) -> GenerationCall:
    """Check `body` for the model `served` and count its prompt; `InvalidRequestError` (400) for any fault."""
    generation = served.config.generation
    if generation is None:
        raise _invalid(f"model {served.name!r} is not a generative model: it is served on /v2 and "
                       "/v1/embeddings, not on /v1/chat/completions or /v1/completions", "model")
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    if route == "chat" and not (generation.chat and tokenizer.has_chat_template):
        raise _invalid(f"model {served.name!r} has no chat template: use /v1/completions", "model")
    _check_fields(body, accepted, "messages" if route == "chat" else "prompt", engine)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise _invalid("give `max_tokens` or `max_completion_tokens`, not both", "max_completion_tokens")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = _positive_int(body, max_key)
    n = _positive_int(body, "n") or 1
    if n > MAX_N:
        raise _invalid(f"`n` is at most {MAX_N}, got {n}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid(f"`stream` must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise _invalid("`stream_options` is an object, and only with `stream: true`", "stream_options")

    if route == "chat":
        prompts = [tokenizer.chat_ids(check_messages(body["messages"]), body.get("tools"))]
    else:
        prompts = [p if isinstance(p, list) else tokenizer.text_ids(p) for p in _prompts(body["prompt"])]
    context = generation.context_length
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise _invalid(f"the prompt has {longest} tokens; model {served.name!r} has a context of {context} "
                       "tokens, which must hold the prompt and at least one new token", "messages"
                       if route == "chat" else "prompt")
    if asked is None:
        max_tokens = min(generation.default_max_tokens, context - longest)
    elif longest + asked > context:
        raise _invalid(f"`{max_key}` is {asked} and the prompt has {longest} tokens: together "
                       f"{longest + asked}, beyond model {served.name!r}'s context of {context} tokens; "
                       f"ask for at most {context - longest}", max_key)
    else:
        max_tokens = asked

    forwarded = dict(body)
    forwarded["model"] = served.name
    forwarded.pop("max_completion_tokens", None)
    forwarded["max_tokens"] = max_tokens
    include_usage = bool(stream and isinstance(options, dict) and options.get("include_usage"))
    if stream:
        forwarded["stream_options"] = {**(options or {}), "include_usage": True}
    return GenerationCall(
        route=route, served=served, body=forwarded, prompt_ids=prompts[0],
        prompt_tokens=sum(len(p) for p in prompts),
        max_tokens=max_tokens, n=n * len(prompts), stream=stream, include_usage=include_usage,
        accepted=accepted,
    )


def heavy(body: Any) -> bool:
    """True when tokenising `body` is worth moving off the event loop."""
    if not isinstance(body, dict):
        return False
    raw = body.get("messages") if "messages" in body else body.get("prompt")
    return len(str(raw)) > HEAVY_PROMPT_CHARS if raw is not None else False
