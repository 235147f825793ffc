"""Checking a chat or completion request before any engine sees it (`prepare_call`).

A stand-in tokenizer counts one token per word (plus 3 for a chat turn), so the context
arithmetic is plain to read; the real tokenizer and engine are exercised in tests/llm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kcloud.errors import InvalidRequestError
from kcloud.models.config import Generation, ModelConfig
from kcloud.models.repository import ModelEntry
from kcloud.serving.generation import heavy, prepare_call

ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "seed",
        "n",
        "stream",
        "stream_options",
        "ignore_eos",
        "response_format",
        "tools",
    }
)


class WordTokenizer:
    has_chat_template = True

    def chat_ids(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        words = sum(len(str(m.get("content") or "").split()) for m in messages)
        return list(range(words + 3 * len(messages)))

    def text_ids(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def entry(context: int = 64, default_max: int = 16, chat: bool = True) -> ModelEntry:
    config = ModelConfig(
        name="chat",
        platform="transformers",
        generation=Generation(
            context_length=context, kv_cache_bytes=1 << 20, default_max_tokens=default_max, chat=chat
        ),
    )
    return ModelEntry(
        name="chat",
        version=1,
        config=config,
        path=Path("/nonexistent/1"),
        model_dir=Path("/nonexistent"),
        weights_path=Path("/nonexistent/1/model.safetensors"),
        sha256="0" * 64,
    )


def prepare(body: Any, route: str = "chat", model: ModelEntry | None = None):
    return prepare_call(route, body, model or entry(), ACCEPTED, "vllm", WordTokenizer())  # type: ignore[arg-type]


def refused(
    body: Any, match: str, route: str = "chat", model: ModelEntry | None = None
) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError, match=match) as caught:
        prepare(body, route, model)
    assert caught.value.status == 400
    return caught.value


USER = [{"role": "user", "content": "one two three four"}]


def test_a_good_chat_request_is_forwarded_with_its_model_and_max_tokens_explicit() -> None:
    call = prepare({"model": "chat", "messages": USER, "temperature": 0.2, "seed": 7})
    assert call.prompt_tokens == 7 and call.max_tokens == 16 and call.n == 1
    assert call.body == {"model": "chat", "messages": USER, "temperature": 0.2, "seed": 7, "max_tokens": 16}
    assert call.tokens == 7 + 16 and call.path == "/v1/chat/completions" and not call.stream


def test_max_tokens_defaults_to_what_the_context_leaves() -> None:
    call = prepare(
        {"model": "chat", "messages": [{"role": "user", "content": "w " * 55}]},
        model=entry(context=64, default_max=16),
    )
    assert call.prompt_tokens == 58 and call.max_tokens == 6


def test_streams_always_ask_the_engine_for_usage_and_remember_whether_the_client_did() -> None:
    quiet = prepare({"model": "chat", "messages": USER, "stream": True})
    assert quiet.body["stream_options"] == {"include_usage": True} and not quiet.include_usage
    asked = prepare(
        {"model": "chat", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert asked.include_usage


def test_completions_take_text_token_ids_and_batches() -> None:
    assert prepare({"model": "chat", "prompt": "a b c"}, "completions").prompt_tokens == 3
    assert prepare({"model": "chat", "prompt": [5, 6, 7, 8]}, "completions").prompt_tokens == 4
    batch = prepare({"model": "chat", "prompt": ["a b", "c d e"], "max_tokens": 4, "n": 2}, "completions")
    assert batch.prompt_tokens == 5 and batch.n == 4 and batch.tokens == 5 + 4 * 4
    assert batch.path == "/v1/completions"


def test_a_prompt_longer_than_the_context_is_refused_with_both_numbers() -> None:
    error = refused({"model": "chat", "messages": [{"role": "user", "content": "w " * 70}]}, "73 tokens")
    assert "context of 64" in error.message


def test_max_tokens_beyond_the_context_is_refused_naming_what_fits() -> None:
    refused({"model": "chat", "messages": USER, "max_tokens": 60}, "ask for at most 57")


@pytest.mark.parametrize("value", [0, -5, 1.5, "ten", True])
def test_max_tokens_must_be_a_positive_integer(value: Any) -> None:
    refused({"model": "chat", "messages": USER, "max_tokens": value}, "max_tokens")


def test_max_tokens_and_max_completion_tokens_together_are_refused() -> None:
    refused({"model": "chat", "messages": USER, "max_tokens": 4, "max_completion_tokens": 4}, "not both")
    call = prepare({"model": "chat", "messages": USER, "max_completion_tokens": 5})
    assert call.body["max_tokens"] == 5 and "max_completion_tokens" not in call.body


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        (["hello"], r"messages\[0\] must be an object"),
        ([{"role": "wizard", "content": "hi"}], "'wizard' is not a chat role"),
        ([{"content": "hi"}], "None is not a chat role"),
        ([{"role": "user"}], r"messages\[0\].content is missing"),
        ([{"role": "user", "content": 5}], "string or a list of text parts"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "'image_url' part",
        ),
    ],
)
def test_malformed_messages_are_refused(messages: Any, match: str) -> None:
    refused({"model": "chat", "messages": messages}, match)


def test_an_assistant_turn_with_tool_calls_may_have_no_content() -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "42", "tool_call_id": "1"},
    ]
    assert prepare({"model": "chat", "messages": messages}).prompt_tokens > 0


def test_a_parameter_the_engine_does_not_take_is_named() -> None:
    error = refused(
        {"model": "chat", "messages": USER, "best_of_breed": 3, "logit_magic": 1},
        "vllm does not support the parameters best_of_breed, logit_magic",
    )
    assert error.fields == {"param": "best_of_breed"}


@pytest.mark.parametrize(
    ("body", "route", "match"),
    [
        ([1, 2], "chat", "JSON object"),
        ({"model": "chat"}, "chat", "`messages` is required"),
        ({"model": "chat"}, "completions", "`prompt` is required"),
        ({"model": "chat", "prompt": []}, "completions", "`prompt` must be"),
        ({"model": "chat", "prompt": [1, -2]}, "completions", "`prompt` must be"),
        ({"model": "chat", "messages": USER, "n": 99}, "chat", "`n` is at most"),
        ({"model": "chat", "messages": USER, "stream": "yes"}, "chat", "`stream` must be"),
        (
            {"model": "chat", "messages": USER, "stream_options": {"include_usage": True}},
            "chat",
            "only with `stream: true`",
        ),
    ],
)
def test_other_bad_bodies(body: Any, route: str, match: str) -> None:
    refused(body, match, route)


def test_fields_the_platform_sets_are_refused_even_when_the_engine_takes_them() -> None:
    body = {"model": "chat", "messages": USER, "priority": -100}
    with pytest.raises(InvalidRequestError, match="priority is set by the platform"):
        prepare_call("chat", body, entry(), ACCEPTED | {"priority"}, "vllm", WordTokenizer())  # type: ignore[arg-type]


def test_a_model_without_a_chat_template_is_completions_only() -> None:
    refused({"model": "chat", "messages": USER}, "no chat template", model=entry(chat=False))
    assert prepare({"model": "chat", "prompt": "a"}, "completions", entry(chat=False)).prompt_tokens == 1


def test_usage_reaches_every_sink_once() -> None:
    call = prepare({"model": "chat", "messages": USER})
    seen: list[tuple[int, int]] = []
    call.on_usage.append(lambda p, c: seen.append((p, c)))
    call.usage(7, 3)
    call.usage(7, 3)
    assert seen == [(7, 3)] and call.usage_seen == (7, 3)


def test_long_prompts_are_tokenised_off_the_event_loop() -> None:
    assert heavy({"messages": [{"role": "user", "content": "x" * 9000}]})
    assert not heavy({"messages": USER}) and not heavy([1])
