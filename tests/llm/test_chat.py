"""Chat and completions through the real gateway to a real vLLM CPU engine (issue 15).

Everything here runs against one shared gateway (`chat_farm`): the operator's bundled
SmolLM2-135M-Instruct and tenant acme's own deployment of it. Each bad-input test also proves
that the engine never saw the request, with the engine's own request counter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from llm_support import TENANT, TENANT_DEPLOYMENT, ChatFarm

from kcloud.models.builtin import SMOLLM

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
#: vLLM counts every request it accepted here (by how it finished).
ENGINE_REQUESTS = "vllm:request_success_total"
ENGINE_PROMPT_TOKENS = "vllm:prompt_tokens_total"


def openai_client(farm: ChatFarm, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=farm.url + "/v1", api_key=key or farm.admin_key, max_retries=0)


def test_a_tenant_streams_a_chat_completion_with_the_openai_client_and_its_tokens_are_metered(
    chat_farm: ChatFarm,
) -> None:
    client = openai_client(chat_farm, chat_farm.tenant_key)
    stream = client.chat.completions.create(
        model=TENANT_DEPLOYMENT,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(pieces)
    assert "Paris" in text
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24

    deadline = time.monotonic() + 10  # usage is written to the database every 100 ms
    while True:
        with chat_farm.client() as admin:
            records = admin.get(
                "/api/v1/usage", params={"tenant": TENANT, "group_by": "tenant,deployment"}
            ).json()
        mine = [r for r in records if r["deployment"] == f"{TENANT}:{TENANT_DEPLOYMENT}"]
        if mine and mine[0]["completion_tokens"] >= usage.completion_tokens:
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.2)
    assert mine[0]["prompt_tokens"] >= usage.prompt_tokens


def test_a_stream_without_include_usage_has_no_usage_chunk(chat_farm: ChatFarm) -> None:
    stream = openai_client(chat_farm).chat.completions.create(
        model=SMOLLM, messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


def test_chat_and_completions_without_streaming(chat_farm: ChatFarm) -> None:
    client = openai_client(chat_farm)
    chat = client.chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=8, temperature=0)
    assert "Paris" in chat.choices[0].message.content and chat.usage.completion_tokens <= 8
    done = client.completions.create(
        model=SMOLLM, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert done.choices[0].text.strip() and done.usage.prompt_tokens == 5


def test_sampling_parameters_reach_the_engine_unchanged(chat_farm: ChatFarm) -> None:
    client = openai_client(chat_farm)
    ask = {
        "model": SMOLLM,
        "messages": [{"role": "user", "content": "Count from one to ten in words."}],
        "max_tokens": 30,
        "temperature": 0.0,
    }
    counted = client.chat.completions.create(**ask).choices[0].message.content
    assert "3" in counted  # greedy: it counts "1. 1\n2. 2\n3. 3 ..."
    stopped = client.chat.completions.create(**ask, stop=["3"])
    assert stopped.choices[0].message.content == counted[: counted.index("3")]
    assert stopped.choices[0].finish_reason == "stop"
    two = client.chat.completions.create(
        **{**ask, "temperature": 1.0}, n=2, seed=11, logprobs=True, top_logprobs=2
    )
    assert len(two.choices) == 2 and two.choices[0].logprobs.content[0].top_logprobs
    again = client.chat.completions.create(**{**ask, "temperature": 1.0}, n=2, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]


def test_a_json_schema_response_format_is_honoured(chat_farm: ChatFarm) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = openai_client(chat_farm).chat.completions.create(
        model=SMOLLM,
        messages=[{"role": "user", "content": "Which city is the capital of France? Reply in JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    parsed = json.loads(answer.choices[0].message.content)
    assert set(parsed) == {"city"}


def test_models_lists_chat_models_with_their_context_length(chat_farm: ChatFarm) -> None:
    with chat_farm.client() as admin:
        models = {m["id"]: m for m in admin.get("/v1/models").json()["data"]}
    assert models[SMOLLM]["context_length"] == 4096
    assert models["noop"]["context_length"] is None
    with chat_farm.client(chat_farm.tenant_key) as tenant:  # a tenant sees only its own
        assert [m["id"] for m in tenant.get("/v1/models").json()["data"]] == [f"{TENANT}:{TENANT_DEPLOYMENT}"]


# ------------------------------------------------------------------------------------- bad input
BAD = [
    ({"model": SMOLLM, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "context of 4096"),
    ({"model": SMOLLM, "messages": QUESTION, "max_tokens": 0}, 400, "at least 1"),
    ({"model": SMOLLM, "messages": QUESTION, "max_tokens": 5000}, 400, "ask for at most"),
    ({"model": SMOLLM, "messages": [{"role": "user"}]}, 400, "content is missing"),
    ({"model": SMOLLM, "messages": "hi"}, 400, "non-empty list"),
    (
        {"model": SMOLLM, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "'wizard' is not a chat role",
    ),
    ({"model": "no-such-model", "messages": QUESTION}, 404, "not served"),
    ({"model": "noop", "messages": QUESTION}, 400, "not a generative model"),
    (
        {"model": SMOLLM, "messages": QUESTION, "frobnicate": 1},
        400,
        "does not support the parameter frobnicate",
    ),
    ({"messages": QUESTION}, 400, "`model` is required"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_a_clear_4xx_and_never_reach_the_engine(
    chat_farm: ChatFarm, body: dict, status: int, message: str
) -> None:
    before = chat_farm.engine_metric(ENGINE_PROMPT_TOKENS)
    with chat_farm.client() as admin:
        answer = admin.post("/v1/chat/completions", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error["message"] and error["type"]
    assert chat_farm.engine_metric(ENGINE_PROMPT_TOKENS) == before


def test_a_body_that_is_not_json_is_refused(chat_farm: ChatFarm) -> None:
    with chat_farm.client() as admin:
        answer = admin.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]["message"]


def test_the_openai_client_raises_its_typed_errors_with_our_message(chat_farm: ChatFarm) -> None:
    with pytest.raises(openai.BadRequestError, match="'wizard' is not a chat role"):
        openai_client(chat_farm).chat.completions.create(
            model=SMOLLM, messages=[{"role": "wizard", "content": "hi"}]
        )  # type: ignore[list-item]


def test_another_tenants_model_does_not_exist_for_a_tenant(chat_farm: ChatFarm) -> None:
    with pytest.raises(openai.NotFoundError):
        openai_client(chat_farm, chat_farm.tenant_key).chat.completions.create(
            model=SMOLLM, messages=QUESTION
        )


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tools_are_passed_to_the_engine_which_answers_for_them(chat_farm: ChatFarm) -> None:
    """`tools` and `tool_choice` reach vLLM as the client wrote them: a valid pair is served, and what
    the engine refuses comes back with the engine's own reason (this engine runs without a tool-call
    parser, so it refuses automatic tool choice), not a gateway's guess."""
    body = {"model": SMOLLM, "messages": QUESTION, "max_tokens": 2, "tools": [WEATHER_TOOL]}
    with chat_farm.client() as client:
        served = client.post("/v1/chat/completions", json={**body, "tool_choice": "none"})
        assert served.status_code == 200, served.text
        assert served.json()["choices"][0]["message"].get("tool_calls") in (None, [])
        auto = client.post("/v1/chat/completions", json={**body, "tool_choice": "auto"})
        assert auto.status_code == 400, auto.text
        assert "enable-auto-tool-choice" in auto.text  # the engine's words


def test_tenants_do_not_share_the_engines_prefix_cache(chat_farm: ChatFarm) -> None:
    """The gateway salts each tenant's requests (vLLM's `cache_salt`, a secret per tenant): a prompt a
    tenant repeats hits its own cached prefix, the same prompt from another principal on the same engine
    does not, and a client's own salt is replaced by its tenant's."""
    served = f"{TENANT}:{TENANT_DEPLOYMENT}"
    prompt = " ".join(f"item {i} of a list only this test writes ({time.time_ns()})" for i in range(60))

    def hits_after(key: str, model: str, **extra: object) -> float:
        with chat_farm.client(key) as client:
            answer = client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1,
                                                          **extra})
        assert answer.status_code == 200, answer.text
        time.sleep(1.0)  # the engine's counters follow its step
        return chat_farm.engine_metric("vllm:prefix_cache_hits_total", served)

    first = hits_after(chat_farm.tenant_key, TENANT_DEPLOYMENT)
    again = hits_after(chat_farm.tenant_key, TENANT_DEPLOYMENT)
    assert again - first >= 128, "the tenant's repeated prompt should hit its own prefix cache"
    operator = hits_after(chat_farm.admin_key, served)  # same engine, same prompt, another principal
    assert operator == again, "another principal's identical prompt must not hit the tenant's cache"
    own_salt = hits_after(chat_farm.tenant_key, TENANT_DEPLOYMENT, cache_salt="chosen-by-the-client")
    assert own_salt - operator >= 128, "a client's own salt is replaced by its tenant's"


# ------------------------------------------------------------------------------ streams that break
def test_a_client_that_leaves_mid_stream_aborts_the_engine_request(chat_farm: ChatFarm) -> None:
    body = {"model": SMOLLM, "messages": QUESTION, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with chat_farm.client() as admin, admin.stream("POST", "/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert chat_farm.engine_metric("vllm:num_requests_running") >= 1
    # The client has gone after one event; 3000 tokens would take the engine minutes.
    deadline = time.monotonic() + 15
    while chat_farm.engine_metric("vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.2)
    assert all(e.in_flight == 0 and e.outstanding_tokens == 0 for e in chat_farm.engines())


def test_an_engine_that_dies_mid_stream_ends_the_stream_with_an_error_and_is_replaced(
    chat_farm: ChatFarm,
) -> None:
    [engine] = chat_farm.engines()
    old_pid = engine.pid
    assert old_pid is not None
    body = {"model": SMOLLM, "messages": QUESTION, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    events: list[str] = []
    with chat_farm.client() as admin, admin.stream("POST", "/v1/chat/completions", json=body) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                if len(events) == 3:
                    os.killpg(old_pid, signal.SIGKILL)
    assert len(events) > 3, "the stream ended without a word"
    assert json.loads(events[-2][6:])["error"]["message"].startswith("the engine of replica")
    assert events[-1] == "data: [DONE]"
    # Another request does not hang while the replica is replaced: it is refused (503) or served.
    started = time.monotonic()
    with chat_farm.client() as admin:
        answer = admin.post(
            "/v1/chat/completions", json={"model": SMOLLM, "messages": QUESTION, "max_tokens": 4}
        )
    assert answer.status_code in (200, 503) and time.monotonic() - started < 30
    # The killed engine's exit is noticed (its process reaped) a moment after the stream broke;
    # until then it still counts as alive, and waiting for a live engine would find it.
    deadline = time.monotonic() + 30
    while any(e.pid == old_pid and e.alive for e in chat_farm.engines()):
        assert time.monotonic() < deadline, "the killed engine's exit was not noticed in 30 s"
        time.sleep(0.1)
    chat_farm.wait_ready()
    [replacement] = chat_farm.engines()
    assert replacement.pid != old_pid
    again = openai_client(chat_farm).chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=4)
    assert again.choices[0].message.content


def test_many_streams_at_once_all_finish(chat_farm: ChatFarm) -> None:
    results: list[int] = []

    def one() -> None:
        stream = openai_client(chat_farm).chat.completions.create(
            model=SMOLLM,
            messages=QUESTION,
            max_tokens=16,
            extra_body={"ignore_eos": True},
            stream=True,
            stream_options={"include_usage": True},
        )
        results.append(next(c.usage.completion_tokens for c in stream if c.usage))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [16] * 8
    assert chat_farm.engine_metric(ENGINE_REQUESTS) > 0


# ------------------------------------------------------------------------------------ token quotas
def test_a_tenant_over_its_token_quota_gets_429_with_retry_after(chat_farm: ChatFarm) -> None:
    with chat_farm.client() as admin:
        made = admin.post("/api/v1/keys", json={"tenant": TENANT, "name": "tight", "tokens_per_minute": 40})
        assert made.status_code == 201, made.text
    key = made.json()["key"]
    client = openai_client(chat_farm, key)
    first = client.chat.completions.create(
        model=TENANT_DEPLOYMENT, messages=QUESTION, max_tokens=30, extra_body={"ignore_eos": True}
    )
    assert first.usage.total_tokens > 40
    with httpx.Client(base_url=chat_farm.url, headers={"authorization": f"Bearer {key}"}) as raw:
        refused = raw.post("/v1/chat/completions", json={"model": TENANT_DEPLOYMENT, "messages": QUESTION})
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert "per minute" in refused.json()["error"]["message"]


# ------------------------------------------------------------------------------ OIP generate
def test_oip_generate_and_generate_stream(chat_farm: ChatFarm) -> None:
    request = {"text_input": "The capital of France is", "parameters": {"max_tokens": 6, "temperature": 0}}
    with chat_farm.client() as admin:
        whole = admin.post(f"/v2/models/{SMOLLM}/generate", json=request)
        assert whole.status_code == 200, whole.text
        answer = whole.json()
        assert answer["model_name"] == SMOLLM and answer["model_version"] == "1" and answer["text_output"]
        pieces = []
        with admin.stream("POST", f"/v2/models/{SMOLLM}/versions/1/generate_stream", json=request) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    pieces.append(json.loads(line[6:])["text_output"])
        assert len(pieces) > 1 and "".join(pieces) == answer["text_output"]  # greedy: the same text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"parameters": {}}, '{"text_input": string'),
        ({"text_input": "hi", "parameters": {"stream": True}}, "may not set stream"),
        ({"text_input": "hi", "temperature": 0}, "unknown field temperature"),
        ({"text_input": "hi", "parameters": {"max_tokens": -1}}, "at least 1"),
    ],
)
def test_oip_generate_bad_input_is_an_oip_error(chat_farm: ChatFarm, body: dict, message: str) -> None:
    with chat_farm.client() as admin:
        answer = admin.post(f"/v2/models/{SMOLLM}/generate", json=body)
    assert answer.status_code == 400 and message in answer.json()["error"]


# ------------------------------------------------------------------------------------ metrics
def test_engine_metrics_are_reexported_under_kcloud_names(chat_farm: ChatFarm) -> None:
    openai_client(chat_farm).chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=4)
    [engine] = chat_farm.engines()
    wanted = "kcloud_llm_time_to_first_token_seconds_count{"
    deadline = time.monotonic() + 15  # scraped every 2 s
    while True:
        with chat_farm.client() as admin:
            text = admin.get("/metrics").text
        ttft = [
            line for line in text.splitlines() if line.startswith(wanted) and f'replica="{engine.id}"' in line
        ]
        if ttft and float(ttft[0].split()[-1]) >= 1:
            break
        assert time.monotonic() < deadline, f"no TTFT counted for the engine: {ttft}"
        time.sleep(0.5)
    assert f'deployment="{SMOLLM}"' in ttft[0] and 'engine="vllm"' in ttft[0]
    assert "kcloud_llm_kv_cache_usage_ratio{" in text
    assert f'kcloud_llm_routed_total{{model="{SMOLLM}",policy="least-tokens",replica="{engine.id}"}}' in text


def test_the_gateway_measures_its_own_part_of_each_streams_first_token(chat_farm: ChatFarm) -> None:
    """`kcloud_llm_gateway_first_token_seconds`: arrival to sending, plus the first event's relay;
    part of what the client waits for its first token, never all of it (the engine works too)."""
    from prometheus_client.parser import text_string_to_metric_families

    def sensor() -> tuple[float, float]:
        with chat_farm.client() as admin:
            text = admin.get("/metrics").text
        [family] = [f for f in text_string_to_metric_families(text)
                    if f.name == "kcloud_llm_gateway_first_token_seconds"]
        values = {s.name: s.value for s in family.samples if s.labels.get("model") == SMOLLM
                  and not s.name.endswith("_bucket")}
        return values.get(family.name + "_sum", 0.0), values.get(family.name + "_count", 0.0)

    before = sensor()
    started = time.perf_counter()
    stream = openai_client(chat_farm).chat.completions.create(
        model=SMOLLM, messages=QUESTION, max_tokens=8, stream=True)
    client_ttft = None
    for chunk in stream:
        if client_ttft is None and chunk.choices:
            client_ttft = time.perf_counter() - started
    # not a stream: no first token to measure
    openai_client(chat_farm).chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=2)
    total, count = sensor()
    assert count - before[1] == 1  # the stream only
    assert client_ttft is not None and 0 < total - before[0] < client_ttft


def test_placement_explain_shows_which_routing_policy_chose_each_replica(chat_farm: ChatFarm) -> None:
    openai_client(chat_farm).chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=2)
    with chat_farm.client() as admin:
        view = admin.get(f"/api/v1/deployments/{SMOLLM}/placement").json()
    [engine] = chat_farm.engines()
    assert view["routing"]["policy"] == "prefix"
    assert sum(view["routing"]["routed"][engine.id].values()) >= 1
    kcloud = str(Path(sys.executable).with_name("kcloud"))
    shown = subprocess.run(
        [kcloud, "placement", "explain", SMOLLM, "--url", chat_farm.url, "--api-key", chat_farm.admin_key],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "requests routed by token policy prefix" in shown.stdout and engine.id in shown.stdout
