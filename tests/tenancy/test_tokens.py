"""Token quotas and token usage (issue 15 item 5): the limiter's windows on a clock the test sets,
then, on SQLite and PostgreSQL, the admin API and the CLI that set the limits, tokens metered through
the middleware into the usage table (a streamed answer's too), and the migration that adds them.

The LLM routes are not here: a tiny route calls `admit` and `charge` as they do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.testclient import TestClient
from tenancy_support import SERVER_SECRET, fresh_database
from typer.testing import CliRunner

from kcloud.cli import app as cli_app
from kcloud.serving.gateway.errors import install_error_handlers
from kcloud.store.db import alembic_config, create_db_engine, head_revision, open_database
from kcloud.tenancy import store, usage
from kcloud.tenancy.api import tenancy_router
from kcloud.tenancy.context import RequestContext, current_request
from kcloud.tenancy.errors import TokenQuotaError
from kcloud.tenancy.metering import UsageBucket, UsageCounts, utc_day
from kcloud.tenancy.middleware import TenancyMiddleware
from kcloud.tenancy.roles import Principal, Role
from kcloud.tenancy.service import Tenancy
from kcloud.tenancy.tokens import NO_TOKEN_LIMITS, TokenLimiter, TokenLimits

SECRET = SERVER_SECRET.encode()
#: 2030-01-02 23:00:00 UTC: an hour before a UTC day ends.
LATE = datetime(2030, 1, 2, 23, 0, tzinfo=UTC).timestamp()


# -- the limiter, on a clock the test sets -------------------------------------------------------


@dataclass
class Clock:
    now: float = LATE

    def __call__(self) -> float:
        return self.now


def _ctx(key_id: int | None, tenant_id: int | None, limits: TokenLimits | None = None,
         tenant: str = "acme") -> RequestContext:
    principal = Principal(key_id=key_id, key_prefix=f"prefix{key_id}", role=Role.MEMBER, tenant_id=tenant_id,
                          tenant_name=tenant)
    return RequestContext(principal, token_limits=limits)


def test_the_minute_window_refuses_once_used_up_and_frees_as_it_slides():
    clock = Clock()
    limiter = TokenLimiter(clock)
    ctx = _ctx(1, 10, TokenLimits(key_per_minute=1000))
    limiter.admit(ctx)
    limiter.charge(ctx, 400, 200)
    clock.now += 10
    limiter.admit(ctx)  # 600 of 1,000: admitted, and it may take the key over by its own tokens
    limiter.charge(ctx, 100, 400)
    clock.now += 10
    with pytest.raises(TokenQuotaError) as refused:
        limiter.admit(ctx)
    error = refused.value
    # 1,100 used; the 600 charged 20 s ago leave the window in 40 s, and 500 < 1,000
    assert error.status == 429 and error.headers == {"retry-after": "40"}
    assert error.fields == {"limit": "tokens_per_minute", "scope": "key", "allowed": 1000, "used": 1100,
                            "retry_after_s": 40}
    assert "key prefix1 has used 1,100 of its 1,000 tokens per minute" in error.message
    clock.now += 39.5
    with pytest.raises(TokenQuotaError):
        limiter.admit(ctx)
    clock.now += 0.5
    limiter.admit(ctx)
    assert limiter.key_usage(1).minute == 500 and limiter.key_usage(1).day == 1100


def test_the_day_window_is_the_utc_day():
    clock = Clock()
    limiter = TokenLimiter(clock)
    ctx = _ctx(1, 10, TokenLimits(tenant_per_day=5000))
    limiter.charge(ctx, 1000, 4000)
    clock.now += 120  # long past the minute: only the day counts
    with pytest.raises(TokenQuotaError) as refused:
        limiter.admit(ctx)
    assert refused.value.headers["retry-after"] == str(3600 - 120)  # until 00:00 UTC
    assert refused.value.fields["limit"] == "tokens_per_day" and refused.value.fields["scope"] == "tenant"
    assert "tenant 'acme' (all its keys) has used 5,000 of its 5,000 tokens per day (UTC)" in (
        refused.value.message)
    clock.now = datetime(2030, 1, 3, 0, 0, 1, tzinfo=UTC).timestamp()
    limiter.admit(ctx)
    assert limiter.tenant_usage(10).day == 0


def test_a_tenant_limit_counts_all_its_keys_a_key_limit_only_its_own():
    limiter = TokenLimiter(Clock())
    limits = TokenLimits(key_per_minute=100, tenant_per_minute=150)
    first, second = _ctx(1, 10, limits), _ctx(2, 10, limits)
    other_tenant = _ctx(3, 20, limits, tenant="other")
    limiter.charge(first, 100, 0)
    with pytest.raises(TokenQuotaError) as refused:
        limiter.admit(first)
    assert refused.value.fields["scope"] == "key"
    limiter.admit(second)  # the same tenant, its own key's window is empty; the tenant has 50 left
    limiter.charge(second, 30, 30)
    with pytest.raises(TokenQuotaError) as refused:
        limiter.admit(second)
    assert refused.value.fields["scope"] == "tenant" and refused.value.fields["used"] == 160
    limiter.admit(other_tenant)


def test_the_refusal_names_the_window_that_frees_last():
    clock = Clock()
    limiter = TokenLimiter(clock)
    ctx = _ctx(1, 10, TokenLimits(key_per_minute=10, tenant_per_day=10))
    limiter.charge(ctx, 10, 0)
    with pytest.raises(TokenQuotaError) as refused:
        limiter.admit(ctx)
    assert refused.value.fields["limit"] == "tokens_per_day"
    assert refused.value.headers["retry-after"] == "3600"


def test_a_key_without_limits_is_never_refused_and_its_tokens_still_count():
    limiter = TokenLimiter(Clock())
    for limits in (None, NO_TOKEN_LIMITS):
        ctx = _ctx(1, 10, limits)
        limiter.charge(ctx, 10**9, 10**9)
        limiter.admit(ctx)
    # a limit set later counts what the key already used in the window
    with pytest.raises(TokenQuotaError):
        limiter.admit(_ctx(1, 10, TokenLimits(key_per_day=10**9)))
    insecure = RequestContext(Principal(key_id=None, key_prefix=None, role=Role.ADMIN, tenant_id=None))
    limiter.charge(insecure, 5, 6)
    limiter.admit(insecure)
    assert (insecure.prompt_tokens, insecure.completion_tokens) == (5, 6)


def test_charge_adds_to_the_request_and_refuses_nonsense_counts():
    limiter = TokenLimiter(Clock())
    ctx = _ctx(1, 10)
    limiter.charge(ctx, 3, 4)
    limiter.charge(ctx, 1, 0)
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (4, 4)
    for prompt, completion in ((-1, 0), (0, 1.5), (True, 0)):
        with pytest.raises(ValueError, match="whole number"):
            limiter.charge(ctx, prompt, completion)  # type: ignore[arg-type]
    assert (ctx.prompt_tokens, ctx.completion_tokens) == (4, 4)


def test_a_seeded_day_counts_and_another_day_does_not():
    clock = Clock()
    limiter = TokenLimiter(clock)
    today = datetime.fromtimestamp(clock.now, UTC).date()
    limiter.seed_day(today, {1: 700}, {10: 900})
    limiter.seed_day(date(2030, 1, 1), {2: 10**6}, {})
    assert limiter.key_usage(1).day == 700 and limiter.tenant_usage(10).day == 900
    with pytest.raises(TokenQuotaError):
        limiter.admit(_ctx(1, 10, TokenLimits(tenant_per_day=900)))
    limiter.admit(_ctx(2, 11, TokenLimits(key_per_day=1)))  # yesterday's tokens: a new day


# -- through the middleware, the admin API and the database ---------------------------------------


def _app(tenancy: Tenancy) -> FastAPI:
    """The tenancy admin API and middleware, with two routes that generate as the LLM routes will:
    `admit` first, `charge` when the generation ends (after the last chunk of a streamed one)."""
    app = FastAPI()
    install_error_handlers(app)
    app.state.tenancy = tenancy
    app.include_router(tenancy_router())

    @app.post("/v1/test/generate")
    async def generate(request: Request) -> JSONResponse:
        ctx = current_request()
        assert ctx is not None
        body = await request.json()
        tenancy.tokens.admit(ctx)
        ctx.deployment = "tokens-model"
        tenancy.tokens.charge(ctx, body["prompt"], body["completion"])
        return JSONResponse({"prompt_tokens": ctx.prompt_tokens, "completion_tokens": ctx.completion_tokens})

    @app.post("/v1/test/stream")
    async def stream(request: Request) -> StreamingResponse:
        ctx = current_request()
        assert ctx is not None
        body = await request.json()
        tenancy.tokens.admit(ctx)
        ctx.deployment = "tokens-model"

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for index in range(body["completion"]):
                    yield f"data: {index}\n\n".encode()
            finally:  # charged when the generation ends, also when the client went away
                tenancy.tokens.charge(ctx, body["prompt"], body["completion"])

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app.add_middleware(TenancyMiddleware, tenancy=tenancy)
    return app


@dataclass
class Served:
    tenancy: Tenancy
    client: TestClient
    admin: dict[str, str]


@pytest.fixture
def served(db) -> Iterator[Served]:
    admin = store.create_key(db, SECRET, role=Role.ADMIN, tenant=None, actor="test")
    tenancy = Tenancy(db, server_secret=SECRET)
    with TestClient(_app(tenancy)) as client:
        yield Served(tenancy, client, {"Authorization": f"Bearer {admin.key}"})


def _tenant_and_key(served: Served, tenant: str, **key_limits: int) -> tuple[str, str]:
    """A tenant (made once per database) and a new member key of it: (key, prefix)."""
    if served.client.get(f"/api/v1/tenants/{tenant}", headers=served.admin).status_code == 404:
        assert served.client.post("/api/v1/tenants", json={"name": tenant},
                                  headers=served.admin).status_code == 201
    made = served.client.post("/api/v1/keys", json={"tenant": tenant, **key_limits}, headers=served.admin)
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["info"]["prefix"]


def _generate(served: Served, key: str, prompt: int, completion: int, route: str = "generate"):
    return served.client.post(f"/v1/test/{route}", json={"prompt": prompt, "completion": completion},
                              headers={"Authorization": f"Bearer {key}"})


def test_limits_set_through_the_admin_api_apply_from_the_next_request(served):
    key, prefix = _tenant_and_key(served, "tokens-limits", tokens_per_minute=100)
    shown = served.client.get(f"/api/v1/keys/{prefix}", headers=served.admin).json()
    assert shown["tokens_per_minute"] == 100 and shown["tokens_per_day"] is None
    assert _generate(served, key, 40, 80).status_code == 200  # under the limit: admitted, overshoots
    refused = _generate(served, key, 1, 1)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) in range(1, 61)
    error = refused.json()["error"]  # the OpenAI routes' error shape (the numbers are in the sentence)
    assert error["type"] == "rate_limit_error"
    assert f"key {prefix} has used 120 of its 100 tokens per minute" in error["message"]

    changed = served.client.patch(f"/api/v1/keys/{prefix}", json={"tokens_per_minute": 1000},
                                  headers=served.admin)
    assert changed.status_code == 200 and changed.json()["tokens_per_minute"] == 1000
    assert _generate(served, key, 10, 10).status_code == 200

    quota = served.client.put("/api/v1/tenants/tokens-limits/quota", json={"tokens_per_day": 100},
                              headers=served.admin)
    assert quota.status_code == 200 and quota.json()["quota"]["tokens_per_day"] == 100
    refused = _generate(served, key, 1, 1)
    assert refused.status_code == 429
    assert "tenant 'tokens-limits' (all its keys) has used 140 of its 100 tokens per day" in (
        refused.json()["error"]["message"])

    removed = served.client.patch(f"/api/v1/keys/{prefix}", json={"tokens_per_minute": None},
                                  headers=served.admin)
    assert removed.json()["tokens_per_minute"] is None
    assert served.client.put("/api/v1/tenants/tokens-limits/quota", json={},
                             headers=served.admin).status_code == 200
    assert _generate(served, key, 1, 1).status_code == 200
    actions = [e["action"] for e in served.client.get("/api/v1/audit", params={"action": "key.limits"},
                                                      headers=served.admin).json()]
    assert actions.count("key.limits") >= 2


def test_tokens_are_metered_to_the_usage_table_a_streamed_answers_too(served, db):
    key, prefix = _tenant_and_key(served, "tokens-meter")
    assert _generate(served, key, 7, 11).status_code == 200
    streamed = _generate(served, key, 5, 13, route="stream")
    assert streamed.status_code == 200 and streamed.text.count("data:") == 13
    (record,) = served.client.get("/api/v1/usage", params={"key": prefix, "group_by": "key"},
                                  headers=served.admin).json()
    assert record["requests"] == 2
    assert (record["prompt_tokens"], record["completion_tokens"]) == (12, 24)


def test_with_usage_written_before_acknowledging_a_stream_is_written_with_its_tokens(db):
    """The last chunk of a streamed answer waits for its usage row, tokens included (they are known
    only once the generation ends, long after the status left)."""
    tenancy = Tenancy(db, server_secret=SECRET, usage_before_ack=True)
    with TestClient(_app(tenancy)) as client:
        served = Served(tenancy, client, {})
        admin = store.create_key(db, SECRET, role=Role.ADMIN, tenant=None, actor="test")
        served.admin = {"Authorization": f"Bearer {admin.key}"}
        key, prefix = _tenant_and_key(served, "tokens-ack")
        assert _generate(served, key, 3, 4, route="stream").status_code == 200
        (row,) = usage.query(db, key=prefix, group_by=("key",))  # no flush: written before the answer
        assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 3, 4)


def test_a_restart_keeps_the_days_tokens(served, db):
    """The day windows are seeded from the usage table, so a new gateway refuses a key whose daily
    quota the old one used up."""
    key, _ = _tenant_and_key(served, "tokens-restart", tokens_per_day=50)
    assert _generate(served, key, 30, 30).status_code == 200
    served.tenancy.flush_usage()
    restarted = Tenancy(db, server_secret=SECRET)
    with TestClient(_app(restarted)) as client:
        refused = client.post("/v1/test/generate", json={"prompt": 1, "completion": 1},
                              headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 429
    assert "has used 60 of its 50 tokens per day" in refused.json()["error"]["message"]


@pytest.mark.parametrize("bad", [-5, 0, 1.5, "10", True])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/keys", {"tenant": "tokens-bad"}),
    ("PATCH", "/api/v1/keys/{prefix}", {}),
    ("PUT", "/api/v1/tenants/tokens-bad/quota", {}),
])
def test_a_token_limit_that_is_not_a_positive_whole_number_is_a_400(served, method, path, body, bad):
    _, prefix = _tenant_and_key(served, "tokens-bad")
    for field in ("tokens_per_minute", "tokens_per_day"):
        answer = served.client.request(method, path.format(prefix=prefix), json={**body, field: bad},
                                       headers=served.admin)
        assert answer.status_code == 400, answer.text
        assert field in answer.json()["error"]


@pytest.mark.parametrize(("args", "message"), [
    (("keys", "create", "--tenant", "alpha", "--tokens-per-minute", "-5"), "--tokens-per-minute"),
    (("keys", "create", "--tenant", "alpha", "--tokens-per-day", "1.5"), "--tokens-per-day"),
    (("keys", "limits", "abcdefabcdef", "--tokens-per-day", "0"), "--tokens-per-day"),
    (("tenants", "quota", "alpha", "--tokens-per-minute", "lots"), "--tokens-per-minute"),
    (("tenants", "create", "x", "--tokens-per-day", "-1"), "--tokens-per-day"),
])
def test_a_token_limit_that_is_not_a_positive_whole_number_is_refused_by_the_cli(args, message):
    result = CliRunner().invoke(cli_app, list(args), env={"KCLOUD_URL": "http://127.0.0.1:1",
                                                           "KCLOUD_API_KEY": "kc_x", "COLUMNS": "200"})
    assert result.exit_code == 2, result.output  # refused before any request (nothing listens there)
    assert "Invalid value" in result.output and message in result.output


@pytest.mark.slow
def test_the_cli_sets_token_limits_and_shows_token_usage(gateway, keys, db):
    runner = CliRunner()

    def kcloud(*args: str):
        result = runner.invoke(cli_app, list(args), env={"KCLOUD_URL": gateway.url, "COLUMNS": "250",
                                                         "KCLOUD_API_KEY": keys["admin"]})
        assert result.exit_code == 0, result.output
        return result

    kcloud("tenants", "create", "tokens-cli", "--tokens-per-minute", "1000", "--tokens-per-day", "50000")
    kcloud("tenants", "quota", "tokens-cli", "--tokens-per-day", "60000")
    quota = json.loads(kcloud("tenants", "show", "tokens-cli", "--json").stdout)["quota"]
    assert (quota["tokens_per_minute"], quota["tokens_per_day"]) == (1000, 60000)
    assert "60000" in kcloud("tenants", "list").output
    key = kcloud("keys", "create", "--tenant", "tokens-cli", "--tokens-per-minute", "200").stdout
    prefix = key.strip().splitlines()[-1].split("_")[1]
    limited = kcloud("keys", "limits", prefix, "--tokens-per-day", "9000", "--unset", "tokens_per_minute")
    assert "9,000 tok/day" in limited.output and "tok/min" not in limited.output
    assert "9,000 tok/day" in kcloud("keys", "list", "--tenant", "tokens-cli").output

    bucket = UsageBucket(utc_day(), None, None, "tokens-cli-model", "tokens-cli", prefix)
    usage.write_interval(db, {bucket: UsageCounts(requests=3, prompt_tokens=123, completion_tokens=4567)})
    table = kcloud("usage", "--deployment", "tokens-cli-model", "--by", "deployment").output
    assert "prompt tok" in table and "completion tok" in table
    row = next(line for line in table.splitlines() if "tokens-cli-model" in line)
    assert "123" in row and "4567" in row
    (record,) = json.loads(kcloud("usage", "--deployment", "tokens-cli-model", "--by", "key",
                                  "--json").stdout)
    assert record["key"] == prefix
    assert (record["prompt_tokens"], record["completion_tokens"]) == (123, 4567)


def test_the_migration_adds_token_columns_to_an_existing_database(backend, tmp_path_factory):
    """A database at the revision before (0003), with a key, a quota and usage, upgrades in place:
    everything kept, no token limits, and 0 tokens in the usage already there."""
    with fresh_database(backend, tmp_path_factory) as url:
        engine = create_db_engine(url)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
            old = sa.MetaData()
            old.reflect(connection, only=["tenants", "tenant_quotas", "api_keys", "usage"])
            now = datetime.now(UTC)
            connection.execute(old.tables["tenants"].insert(),
                               {"id": 1, "name": "old-co", "created_at": now, "created_by": "test"})
            connection.execute(old.tables["tenant_quotas"].insert(), {
                "tenant_id": 1, "max_devices_per_vendor": {}, "pf_figure": "fp16_bf16_pflops",
                "max_concurrency": 4, "updated_at": now})
            connection.execute(old.tables["api_keys"].insert(), {
                "id": 1, "prefix": "oldprefix123", "digest": "0" * 64, "role": "member", "tenant_id": 1,
                "created_at": now, "created_by": "test", "burst": 5, "bootstrap": False})
            connection.execute(old.tables["usage"].insert(), {
                "bucket": "old", "day": date(2030, 1, 2), "tenant_id": 1, "tenant_name": "old-co",
                "key_id": 1, "key_prefix": "oldprefix123", "requests": 7, "samples": 9, "errors": 1,
                "device_seconds": 0.5, "updated_at": now})
        engine.dispose()

        db = open_database(url)  # upgrades to head and checks the schema against the models
        try:
            assert db.revision == head_revision()
            key = store.get_key(db, "oldprefix123")
            assert key.burst == 5 and key.tokens_per_minute is None and key.tokens_per_day is None
            quota = store.tenant_quota(db, "old-co")
            assert quota.max_concurrency == 4 and quota.tokens_per_day is None
            (row,) = usage.query(db, key="oldprefix123")
            assert (row.requests, row.samples, row.prompt_tokens, row.completion_tokens) == (7, 9, 0, 0)
            bucket = UsageBucket(date(2030, 1, 2), 1, 1, None, "old-co", "oldprefix123")
            usage.write_interval(db, {bucket: UsageCounts(requests=1, prompt_tokens=2, completion_tokens=3)})
            assert usage.tokens_used_on(db, date(2030, 1, 2)) == ({1: 5}, {1: 5})
        finally:
            db.close()
