"""No input makes the real server answer 5xx, and its OpenAPI document says what it answers (issue 13,
items 3 and 10), on SQLite and PostgreSQL:

- a bounded schemathesis run over every operation of `/openapi.json` (a fixed seed, a dozen examples
  per operation and generation mode: about 500 cases a database, in about 20 s), asserting no 5xx
  and no status or body that the document does not describe;
- the malformed inputs that once were 500s, each a 400 with a message naming what is wrong;
- the audit log's dates without a zone, the document's error answers, the database files' mode and
  a gzip body with data after its end.

The server is the full stack `kcloud up` runs (gateway, control plane, tenancy) in its own process on
127.0.0.1, with its own fresh database, so what the fuzzer creates or deletes touches no other test.
A longer run: `schemathesis run http://127.0.0.1:PORT/openapi.json -H 'Authorization: Bearer KEY'`.
"""

from __future__ import annotations

import gzip
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tenancy_support import WIDTH, GatewayProcess, fresh_database

pytestmark = pytest.mark.slow

#: Examples per operation: ~36 operations, so a few hundred cases per database, in seconds.
MAX_EXAMPLES = 10
#: The model the fuzz gateway serves (one replica on this machine's CPU), so inference is reached.
SERVED = "ops-model"
TENANT = "fuzz"


@dataclass(frozen=True)
class Fuzzed:
    """The fuzz gateway and the objects on it that the pinned half of the run names in its paths."""

    process: GatewayProcess
    url: str
    #: (method or "*", path prefix, parameter) -> the value a pinned case puts in that path parameter.
    pins: dict[tuple[str, str, str], str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.process.admin_key}"}


@pytest.fixture(scope="module")
def fuzz_gateway(backend: str, repo_path, tmp_path_factory) -> Iterator[Fuzzed]:
    """The full server on a fresh database, serving `SERVED`, with tenants, a deployment and keys
    for the pinned cases to reach (and others for the DELETEs to remove, so the rest stay)."""
    with fresh_database(backend, tmp_path_factory) as url:
        process = GatewayProcess(url, repo_path, tmp_path_factory.mktemp("fuzz-home"), control_plane=True)
        try:
            with process.client(process.admin_key) as admin:
                pins = _make_objects(admin)
            yield Fuzzed(process, url, pins)
        finally:
            process.stop()


def _make_objects(admin: httpx.Client) -> dict[tuple[str, str, str], str]:
    def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        return response.json()

    # TENANT's quota keeps whatever the fuzzer scales its deployment to down to two replicas.
    ok(admin.post("/api/v1/tenants", json={"name": TENANT, "quota": {"max_replicas": 2}}))
    for name in ("fuzz-quota", "fuzz-gone"):
        ok(admin.post("/api/v1/tenants", json={"name": name}))
    ok(admin.post("/api/v1/deployments", json={"model": SERVED, "replicas": 1}))
    kept = ok(admin.post("/api/v1/deployments", json={"model": SERVED, "name": "kept", "replicas": 0,
                                                      "tenant": TENANT}))["name"]
    gone = ok(admin.post("/api/v1/deployments", json={"model": SERVED, "name": "gone", "replicas": 0,
                                                      "tenant": TENANT}))["name"]
    key = ok(admin.post("/api/v1/keys", json={"tenant": TENANT}))["info"]["prefix"]
    gone_key = ok(admin.post("/api/v1/keys", json={"tenant": TENANT}))["info"]["prefix"]
    devices = ok(admin.get("/api/v1/devices"))
    emulated = next(d["uid"] for d in devices if d["emulated"])
    _wait_served(admin)
    return {
        ("*", "/api/v1/tenants/", "name"): TENANT,
        ("PUT", "/api/v1/tenants/", "name"): "fuzz-quota",
        ("DELETE", "/api/v1/tenants/", "name"): "fuzz-gone",
        ("*", "/api/v1/deployments/", "name"): kept,
        ("DELETE", "/api/v1/deployments/", "name"): gone,
        ("*", "/api/v1/keys/", "prefix"): key,
        ("DELETE", "/api/v1/keys/", "prefix"): gone_key,
        ("*", "/api/v1/devices/", "uid"): emulated,
        ("*", "/v2/models/", "model"): SERVED,
        ("*", "/v2/models/", "version"): "1",
    }


def _pinned(fuzzed: Fuzzed, method: str, path: str) -> dict[str, str]:
    """Path parameters naming objects that exist, so the generated bodies and queries get past 404."""
    pins: dict[str, str] = {}
    for (pin_method, prefix, parameter), value in fuzzed.pins.items():
        applies = path.startswith(prefix) and "{" + parameter + "}" in path and pin_method in ("*", method)
        if applies and (parameter not in pins or pin_method == method):  # a method's own pin wins
            pins[parameter] = value
    return pins


def _wait_served(admin: httpx.Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if admin.get(f"/v2/models/{SERVED}/ready").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{SERVED} never became ready")


@dataclass
class Findings:
    """What the run found, one line (and a curl command) each."""

    server_errors: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)
    cases: int = 0


#: What the document must say truly (issue 13, item 10): every status answered is listed, and every
#: body matches its schema and content type. (Not `positive_data_acceptance`: the document cannot
#: state every semantic rule, e.g. that `inputs` names the model's tensors, so a schema-valid
#: request may still be a 400.)
DOCUMENT_CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(fuzzed: Fuzzed) -> Findings:
    """Every operation of `/openapi.json`, with valid and invalid requests, with random path
    parameters and with ones that name existing objects; every answer checked."""
    auth = fuzzed.auth
    api = schemathesis.openapi.from_url(f"{fuzzed.process.url}/openapi.json", headers=auth, timeout=30)
    findings = Findings()
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        pins = _pinned(fuzzed, operation.method.upper(), operation.path)
        flavours = [(mode, None) for mode in GenerationMode] + [(GenerationMode.POSITIVE, pins)] * bool(pins)
        for mode, pinned in flavours:

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pinned))
            @FUZZ_SETTINGS
            def one(case: Case) -> None:
                response = case.call(headers=auth, timeout=30)
                findings.cases += 1
                curl = case.as_curl_command(headers=auth)
                seen = f"{response.status_code} {response.text[:200]!r}\n    {curl}"
                if response.status_code >= 500:
                    findings.server_errors.append(seen)
                try:
                    case.validate_response(response, checks=DOCUMENT_CHECKS, headers=auth)
                except FailureGroup as failed:
                    titles = "; ".join(sorted({failure.title for failure in failed.exceptions}))
                    findings.undocumented.append(f"{case.operation.label}: {titles}: {seen}")

            try:
                one()
            except Unsatisfiable:  # no parameters and no body: there is no invalid request to make
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert operations >= 30, f"only {operations} operations in /openapi.json"
    return findings


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # a fixed seed: the same cases every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # nothing fails inside, so nothing to shrink
    suppress_health_check=list(HealthCheck),
)


def test_no_generated_request_is_a_server_error(fuzz_gateway: Fuzzed) -> None:
    """Every generated request is answered below 500, with a status and a body the document lists."""
    started = time.monotonic()
    found = _fuzz(fuzz_gateway)
    print(f"{found.cases} cases in {time.monotonic() - started:.1f} s")
    assert found.cases >= 300
    assert not found.server_errors, (
        f"{len(found.server_errors)} server errors:\n" + "\n".join(found.server_errors))
    assert not found.undocumented, (
        f"{len(found.undocumented)} answers the OpenAPI document does not describe:\n"
        + "\n".join(found.undocumented[:20]))


# -- the malformed inputs that were 500s (issue 13, item 3) -------------------------------------------

BIG = 2**63  # past every integer column
INT4 = 2**31  # past PostgreSQL's INTEGER
NUL_MESSAGE = "NUL character"


def _tensor(shape: list[int], **fields: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": shape, **fields}


def _infer(tensor: dict[str, Any]) -> bytes:
    return orjson.dumps({"inputs": [tensor]})


#: The 71-dimension shape of the issue (numpy allows 64), 64 floats of data in all.
DEEP = [1] * 70 + [WIDTH]
_BINARY_HEADER = _infer(_tensor(DEEP, parameters={"binary_data_size": WIDTH * 4}))
_GOOD = _infer(_tensor([1, WIDTH], data=[0.5] * WIDTH))
JSON = {"content-type": "application/json"}

#: (id, method, path, body bytes or JSON, extra headers, status, a fragment of the error message)
MALFORMED: list[tuple[str, str, str, Any, dict[str, str], int, str]] = [
    ("shape-65-dims-json", "POST", f"/v2/models/{SERVED}/infer", _infer(_tensor(DEEP, data=[0.0] * WIDTH)),
     JSON, 400, "71 dimensions; at most 64"),
    ("shape-65-dims-binary", "POST", f"/v2/models/{SERVED}/infer", _BINARY_HEADER + bytes(WIDTH * 4),
     {"inference-header-content-length": str(len(_BINARY_HEADER))}, 400, "71 dimensions; at most 64"),
    ("events-after-2**63", "GET", f"/api/v1/events?after={BIG}", None, {}, 400, "after"),
    ("events-after-2**31", "GET", f"/api/v1/events?after={INT4}", None, {}, 400, "after"),
    ("quota-max-replicas-2**63", "PUT", "/api/v1/tenants/fuzz-quota/quota", {"max_replicas": BIG}, {}, 400,
     "max_replicas"),
    ("quota-max-concurrency-2**63", "PUT", "/api/v1/tenants/fuzz-quota/quota", {"max_concurrency": BIG}, {},
     400, "max_concurrency"),
    ("quota-max-replicas-2**31", "PUT", "/api/v1/tenants/fuzz-quota/quota", {"max_replicas": INT4}, {}, 400,
     "max_replicas"),
    ("quota-max-concurrency-2**31", "PUT", "/api/v1/tenants/fuzz-quota/quota", {"max_concurrency": INT4}, {},
     400, "max_concurrency"),
    ("quota-vendor-cap-2**31", "PUT", "/api/v1/tenants/fuzz-quota/quota",
     {"max_devices_per_vendor": {"cpu": INT4}}, {}, 400, "max_devices_per_vendor.cpu"),
    ("tenant-burst-2**63", "POST", "/api/v1/tenants", {"name": "big-burst", "quota": {"burst": BIG}}, {}, 400,
     "quota.burst"),
    ("key-burst-2**63", "POST", "/api/v1/keys", {"tenant": TENANT, "burst": BIG}, {}, 400, "burst"),
    ("key-burst-2**31", "POST", "/api/v1/keys", {"tenant": TENANT, "burst": INT4}, {}, 400, "burst"),
    ("deployment-version-2**31", "POST", "/api/v1/deployments", {"model": SERVED, "version": INT4}, {}, 400,
     "version"),
    ("nul-tenant-path", "GET", "/api/v1/tenants/a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-tenant-delete", "DELETE", "/api/v1/tenants/a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-deployment-path", "GET", "/api/v1/deployments/a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-keys-query", "GET", "/api/v1/keys?tenant=a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-audit-query", "GET", "/api/v1/audit?actor=a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-usage-query", "GET", "/api/v1/usage?deployment=a%00b", None, {}, 400, NUL_MESSAGE),
    ("nul-model-path", "POST", "/v2/models/a%00b/infer", _GOOD, JSON, 400, NUL_MESSAGE),
    ("nul-tenant-description", "POST", "/api/v1/tenants", {"name": "nul", "description": "a\x00b"}, {}, 400,
     "description: text may not contain a NUL character"),
    ("nul-key-name", "POST", "/api/v1/keys", {"tenant": TENANT, "name": "a\x00b"}, {}, 400,
     "name: text may not contain a NUL character"),
    ("nul-constraint", "POST", "/api/v1/deployments",
     {"model": SERVED, "name": "nul", "replicas": 0, "constraints": {"node": "a\x00"}}, {}, 400,
     "constraints.node: text may not contain a NUL character"),
    ("nul-drain-reason", "POST", "/api/v1/devices/no-such/drain", {"reason": "a\x00"}, {}, 400,
     "reason: text may not contain a NUL character"),
    ("audit-since-out-of-range", "GET", "/api/v1/audit?since=0001-01-01T00:00:00%2B01:00", None, {}, 400,
     "since: 0001-01-01T00:00:00+01:00 is out of range in UTC"),
    ("key-expiry-out-of-range", "POST", "/api/v1/keys",
     {"tenant": TENANT, "expires_at": "9999-12-31T23:59:59-01:00"}, {}, 400, "out of range in UTC"),
    ("quota-infinite-pf", "PUT", "/api/v1/tenants/fuzz-quota/quota", b'{"max_pf": 1e400}', JSON, 400,
     "max_pf: Input should be a finite number"),
    ("slo-nan", "POST", "/api/v1/deployments", b'{"model": "ops-model", "slo": {"p99_latency_ms": NaN}}',
     JSON, 400, "slo.p99_latency_ms: Input should be a finite number"),
    ("model-name-too-long", "POST", "/api/v1/deployments", {"model": "m" * 300}, {}, 400, "model"),
    ("node-longer-than-its-column", "POST", "/api/v1/deployments",
     {"model": SERVED, "name": "long", "replicas": 0, "constraints": {"node": "n" * 300}}, {}, 400,
     "constraints.node"),
    # item 10: data after the end of a gzip body was dropped without a word
    ("gzip-trailing-data", "POST", f"/v2/models/{SERVED}/infer", gzip.compress(_GOOD) + b"more",
     {**JSON, "content-encoding": "gzip"}, 400, "4 bytes after the end of its compressed data"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED])
def test_malformed_input_is_a_clear_400(fuzz_gateway: Fuzzed, method, path, body, headers, status, message):
    content = body if isinstance(body, bytes) else None
    with fuzz_gateway.process.client(fuzz_gateway.process.admin_key) as client:
        answer = client.request(method, path, content=content, json=None if content is not None else body,
                                headers=headers)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"], answer.text


def test_gzip_members_in_a_row_are_one_body(fuzz_gateway: Fuzzed):
    """RFC 1952 allows several gzip members in a row: they are read, not refused as trailing data."""
    half = len(_GOOD) // 2
    body = gzip.compress(_GOOD[:half]) + gzip.compress(_GOOD[half:])
    with fuzz_gateway.process.client(fuzz_gateway.process.admin_key) as client:
        answer = client.post(f"/v2/models/{SERVED}/infer", content=body,
                             headers={**JSON, "content-encoding": "gzip"})
    assert answer.status_code == 200, answer.text


def test_audit_dates_without_a_zone_are_utc(fuzz_gateway: Fuzzed):
    """`since=2026-12-04` (a date) and a time without a zone are read as UTC (they were 500s)."""
    now = datetime.now(UTC)
    with fuzz_gateway.process.client(fuzz_gateway.process.admin_key) as admin:
        assert admin.post("/api/v1/keys", json={"tenant": TENANT, "name": "audited"}).status_code == 201

        def entries(**query: str) -> list[dict[str, Any]]:
            answer = admin.get("/api/v1/audit", params={"action": "key.create", **query})
            assert answer.status_code == 200, answer.text
            return answer.json()

        today, tomorrow = now.date().isoformat(), (now + timedelta(days=1)).date().isoformat()
        naive_hour_ago = (now - timedelta(hours=1)).replace(tzinfo=None, microsecond=0).isoformat()
        assert entries(since=today) and entries(since=naive_hour_ago)
        assert entries(since=today) == entries(since=f"{today}T00:00:00Z")
        assert entries(since=tomorrow) == []
        assert entries(until=today) == entries(until=f"{today}T00:00:00+00:00")


# -- the OpenAPI document says what the server answers (issue 13, item 10) --------------------------


def test_the_document_lists_400_and_the_refusals_with_the_error_body(fuzz_gateway: Fuzzed):
    with fuzz_gateway.process.client(fuzz_gateway.process.admin_key) as client:
        document = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    oip_error, openai_error = ({"$ref": f"#/components/schemas/{name}"}
                               for name in ("ErrorResponse", "OpenAIError"))
    for path, item in document["paths"].items():
        error = openai_error if path.startswith("/v1/") else oip_error
        for method, operation in item.items():
            responses = operation["responses"]
            label = f"{method.upper()} {path}"
            assert "422" not in responses or "HTTPValidationError" not in str(responses["422"]), label
            if operation.get("parameters") or operation.get("requestBody"):
                assert "400" in responses, label  # a malformed parameter or body is a 400
            for status, response in responses.items():
                # (the health routes' 400 is {"ready": false}, documented as such)
                if status.startswith(("4", "5")) and not path.endswith("/ready"):
                    assert response["content"]["application/json"]["schema"] == error, (label, status)
            if path not in ("/v2/health/live", "/v2/health/ready"):
                assert {"401", "429"} <= set(responses), label  # tenancy's refusals, before any route
    tenancy_routes = {
        ("post", "/api/v1/tenants"): {"400", "403", "409"},
        ("delete", "/api/v1/tenants/{name}"): {"403", "404", "409"},
        ("get", "/api/v1/tenants/{name}"): {"404"},
        ("put", "/api/v1/tenants/{name}/quota"): {"400", "403", "404"},
        ("post", "/api/v1/keys"): {"400", "403", "404"},
        ("get", "/api/v1/keys/{prefix}"): {"404"},
        ("delete", "/api/v1/keys/{prefix}"): {"403", "404", "409"},
        ("get", "/api/v1/audit"): {"400", "404"},
        ("get", "/api/v1/usage"): {"400", "404"},
    }
    for (method, path), statuses in tenancy_routes.items():
        assert statuses <= set(document["paths"][path][method]["responses"]), (method, path)


# -- the database files are the owner's alone (issue 13, item 10) ------------------------------------


def test_the_database_files_are_readable_by_their_owner_only(fuzz_gateway: Fuzzed):
    if not fuzz_gateway.url.startswith("sqlite"):
        pytest.skip("PostgreSQL keeps its own files")
    database = Path(fuzz_gateway.url.removeprefix("sqlite:///"))
    files = [database, database.with_name(f"{database.name}-wal"), database.with_name(f"{database.name}-shm")]
    assert all(file.exists() for file in files), files  # WAL mode, and the server has written
    assert {file.name: oct(stat.S_IMODE(file.stat().st_mode)) for file in files} == {
        file.name: "0o600" for file in files}


# -- found by fuzzing past the bounded run ------------------------------------------------------------


def test_replica_ids_fit_their_column_and_do_not_collide():
    """A PATCH to 8,863 replicas once failed with a UNIQUE violation (500): one request may place up
    to 10,000 replicas, and their ids had 32 random bits. They have 64, within the 64-character column."""
    from kcloud.farm.decisions import _replica_id

    ids = [_replica_id("n" * 200) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert max(map(len, ids)) <= 64
    assert all(len(replica.rsplit("-", 1)[1]) == 16 for replica in ids)  # 64 bits in hex
