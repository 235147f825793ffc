"""The console's HTTP side against the real gateway: what is public, what each role may read, the
security headers, cross-site requests, and bad input (a run name that climbs out, a corrupt result)."""

from __future__ import annotations

import math

import orjson
import pytest
from console_support import DEPLOYMENTS, ConsoleFarm

from kcloud.console.bench_runs import BenchRuns
from kcloud.console.live import histogram_quantile
from kcloud.console.twin_runs import TwinRuns
from kcloud.errors import NotFoundError, UnprocessableError

pytestmark = pytest.mark.slow


def test_the_pages_are_public_and_locked_down(console_farm: ConsoleFarm) -> None:
    """The page and its assets load without a key (they hold no data); every answer forbids framing,
    sniffing and any script, style or connection to another origin."""
    with console_farm.client() as anyone:
        assert anyone.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
        page = anyone.get("/ui/")
        assert page.status_code == 200 and "kcloud console" in page.text
        csp = page.headers["content-security-policy"]
        rules = ("default-src 'self'", "script-src 'self';", "frame-ancestors 'none'", "connect-src 'self'")
        for rule in rules:
            assert rule in csp
        assert "unsafe-inline" not in csp.split("style-src")[0]  # no inline script, ever
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        for asset in ("console.js", "console.css", "favicon.svg", "assets/plotly.min.js"):
            assert anyone.get(f"/ui/{asset}").status_code == 200, asset
        assert anyone.get("/ui/%2e%2e/%2e%2e/pyproject.toml").status_code == 404  # no way out of the assets
        assert anyone.get("/api/v1/console/overview").status_code == 401
        assert anyone.get("/api/v1/console/devices").status_code == 401


def test_cross_site_requests_change_nothing(console_farm: ConsoleFarm) -> None:
    """The console sends its key only as an Authorization header, never a cookie: a form or fetch
    from another site carries no key, so it is refused, and no CORS header lets it read the answer."""
    admin_key = console_farm.keys["admin"]
    forged = {"Origin": "https://evil.example", "Cookie": f"kcloud.key={admin_key}; session={admin_key}",
              "Content-Type": "application/x-www-form-urlencoded"}
    with console_farm.client() as site:
        made = site.post("/api/v1/keys", content="tenant=alpha&name=stolen", headers=forged)
        assert made.status_code == 401
        assert "access-control-allow-origin" not in made.headers
        preflight = site.options("/api/v1/keys", headers={"Origin": "https://evil.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        drained = site.post("/api/v1/devices/x/drain", headers=forged)
        assert drained.status_code == 401
    with console_farm.client("admin") as admin:
        assert all(k["name"] != "stolen" for k in admin.get("/api/v1/keys").json())


def test_overview_counts_the_farm(console_farm: ConsoleFarm) -> None:
    with console_farm.client("admin") as admin:
        overview = admin.get("/api/v1/console/overview").json()
    capacity, devices = overview["capacity"], overview["devices"]
    assert devices["total"] == devices["emulated"] + 1 > 1  # the farm file's cards and this machine's CPU
    assert devices["healthy"] + devices["draining"] + devices["failed"] == devices["total"]
    groups = {name: set(capacity[f"by_{name}"]) for name in ("sector", "cloud", "origin")}
    assert {"private", "public"} <= groups["sector"] and "unspecified" in groups["sector"]  # the host CPU's
    assert {"NHN Cloud", "Naver Cloud", "KT Cloud"} <= groups["cloud"]
    assert groups["origin"] == {"emulated", "real"}
    assert overview["deployments"]["total"] >= len(DEPLOYMENTS)


def test_a_tenant_sees_its_own_and_no_farm_wide_results(console_farm: ConsoleFarm) -> None:
    """One tenant never sees another's deployments, nor the farm's benchmark results; a read-only
    key reads what its tenant may."""
    for who in ("alpha", "alpha-readonly"):
        with console_farm.client(who) as alpha:
            assert alpha.get("/api/v1/console/overview").json()["deployments"]["total"] == 1  # alpha:mini
            assert alpha.get("/api/v1/console/deployments/alpha:mini/live").status_code == 200
            assert alpha.get("/api/v1/console/deployments/beta:digits/live").status_code == 404
            assert alpha.get("/api/v1/console/bench").status_code == 403
            assert alpha.get("/api/v1/console/twin").status_code == 403
            assert alpha.get(f"/api/v1/console/twin/run/{console_farm.twin_run}").status_code == 403
            assert alpha.get("/api/v1/console/devices").status_code == 200
    with console_farm.client("admin") as admin:
        assert admin.get("/api/v1/console/deployments/beta:digits/live").status_code == 200
        assert admin.get("/api/v1/console/deployments/nope/live").status_code == 404


def test_forced_actions_are_refused(console_farm: ConsoleFarm) -> None:
    """What the page does not draw for a role, the API refuses when a user sends it by hand."""
    with console_farm.client("admin") as admin:
        device = next(d["uid"] for d in admin.get("/api/v1/console/devices").json() if d["emulated"])
    with console_farm.client("alpha-readonly") as viewer:
        assert viewer.post("/api/v1/deployments", json={"model": "noop", "name": "sneaky"}).status_code == 403
        assert viewer.patch("/api/v1/deployments/alpha:mini", json={"replicas": 3}).status_code == 403
        assert viewer.post("/api/v1/keys", json={"tenant": "alpha", "name": "more"}).status_code == 403
    with console_farm.client("alpha") as member:
        assert member.post(f"/api/v1/devices/{device}/drain", json={"reason": "mine now"}).status_code == 403
        assert member.delete("/api/v1/deployments/beta:digits").status_code == 404
    with console_farm.client("admin") as admin:
        assert next(d for d in admin.get("/api/v1/devices").json() if d["uid"] == device)["drained"] is False
        assert admin.get("/api/v1/deployments/beta:digits").status_code == 200


def test_the_devices_table_is_gzipped_once_per_tick(console_farm: ConsoleFarm) -> None:
    with console_farm.client("admin") as admin:
        zipped = admin.get("/api/v1/console/devices", headers={"Accept-Encoding": "gzip"})
        plain = admin.get("/api/v1/console/devices", headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert zipped.num_bytes_downloaded < len(zipped.content)
    rows = orjson.loads(plain.content)
    assert len(rows) == len(zipped.json()) > 0
    row = next(r for r in rows if r["emulated"])
    assert row["modelled"] is True
    assert row["temperature_celsius"] is None and row["reasons"]["temperature_celsius"]  # unknown, with why


def test_bench_runs_list_and_compare(console_farm: ConsoleFarm) -> None:
    a, b = console_farm.runs
    with console_farm.client("admin") as admin:
        runs = admin.get("/api/v1/console/bench").json()
        assert sorted(r["id"] for r in runs) == [a, b]
        assert {r["validity"] for r in runs} <= {"VALID", "INVALID"}
        assert all(r["rules_followed"] is False for r in runs)  # --quick departs from MLPerf's rules
        run = admin.get(f"/api/v1/console/bench/run/{a}").json()
        assert run["rows"] and run["figures"] and all(f["data"] for f in run["figures"])
        compared = admin.get("/api/v1/console/bench/compare", params={"a": a, "b": b}).json()
        assert compared["rows"] and compared["figures"]
        assert admin.get("/api/v1/console/bench/run/../../etc").status_code == 404
        assert admin.get("/api/v1/console/bench/compare", params={"a": a, "b": "nope"}).status_code == 404


def test_bench_runs_refuse_bad_names_and_corrupt_results(tmp_path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{not json")
    (tmp_path / "outside.json").write_text("{}")
    runs = BenchRuns(tmp_path)
    [listed] = runs.list()  # a corrupt result is listed with why, not dropped and not a failed page
    assert listed["id"] == "broken" and listed["error"]
    with pytest.raises(UnprocessableError, match="broken"):
        runs.show("broken")
    for name in ("..", "../" + tmp_path.name + "/broken/..", "/etc", "broken/../../x", "nope", ""):
        with pytest.raises(NotFoundError):
            runs.show(name)


def test_twin_runs_list_and_show(console_farm: ConsoleFarm) -> None:
    with console_farm.client("admin") as admin:
        [listed] = admin.get("/api/v1/console/twin").json()
        assert listed["id"] == console_farm.twin_run and listed["modelled"] is True
        assert listed["farm"] == "k-cloud-phase1" and listed["duration_s"] == 60
        assert listed["deployments"] == 2 and listed["throughput_rps"] > 0
        run = admin.get(f"/api/v1/console/twin/run/{console_farm.twin_run}").json()
    assert [d["name"] for d in run["deployments"]] == ["minilm", "digits"]
    assert all("timeline" not in d for d in run["deployments"])  # drawn as figures instead
    assert len(run["figures"]) == 3 and all(f["data"] for f in run["figures"])  # 2 deployments + utilisation
    assert run["devices_total"] >= len(run["devices"]) > 0
    assert run["devices"][0]["utilisation"] > 0  # devices with replicas come first
    assert any(e.startswith("minilm: placed 8 replica(s)") for e in run["events"])


def test_twin_runs_refuse_bad_names_and_corrupt_results(tmp_path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "twin-result.json").write_text("{not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "twin-result.json").write_text('{"kind": "something else"}')
    (tmp_path / "older").mkdir()  # every key a result has, but a deployment without its figures
    (tmp_path / "older" / "twin-result.json").write_text(orjson.dumps({
        "kind": "kcloud-twin-run", "farm": "f", "basis": "b", "duration_s": 1, "created": "now",
        "deployments": [{"name": "d"}], "devices": [], "energy": {}, "simulation": {}}).decode())
    runs = TwinRuns(tmp_path)
    listed = {r["id"]: r for r in runs.list()}  # listed with why, not dropped and not a failed page
    assert set(listed) == {"broken", "other", "older"} and all(r["error"] for r in listed.values())
    assert "something else" in listed["other"]["error"]
    assert "not a twin result of this kcloud version" in listed["older"]["error"]
    for name in ("broken", "other", "older"):
        with pytest.raises(UnprocessableError, match=name):
            runs.show(name)
    for name in ("..", "/etc", "broken/../../x", "nope", ""):
        with pytest.raises(NotFoundError):
            runs.show(name)
    assert TwinRuns(tmp_path / "none").list() == []


def test_chat_lists_only_generative_deployments(console_farm: ConsoleFarm) -> None:
    """The console farm serves ONNX models only: no chat models (tests/llm opens the page with a
    real engine)."""
    with console_farm.client("admin") as admin:
        chat = admin.get("/api/v1/console/chat").json()
        assert chat["deployments"] == [] and chat["tick_s"] > 0
        live = admin.get("/api/v1/console/deployments/web-digits/live").json()
        assert live["engine"] is None


@pytest.mark.parametrize(
    ("q", "bounds", "counts", "expected"),
    [
        (0.5, [0.1, 0.2, math.inf], [10, 10, 0], 0.1),
        (0.99, [0.1, 0.2, math.inf], [0, 100, 0], 0.199),
        (0.5, [0.1, math.inf], [0, 4], 0.1),  # in the open last bucket: its lower bound
        (0.5, [0.1, math.inf], [0, 0], None),  # no observations: unknown, not 0
    ],
)
def test_histogram_quantile(q, bounds, counts, expected) -> None:
    value = histogram_quantile(q, bounds, counts)
    assert value == expected if expected is None else value == pytest.approx(expected)

