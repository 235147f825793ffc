"""`kcloud deploy ...`, `kcloud placement explain` and `kcloud devices drain` against a real server.

The server (gateway + control plane, uvicorn on loopback) runs in a thread; the commands run
through the real `kcloud` typer app. Both databases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from conftest import ServedControlPlane
from kcloud.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "250", "NO_COLOR": "1", "KCLOUD_API_KEY": ""}


@pytest.fixture(scope="module")
def server(module_db_url, repository, inventory) -> Iterator[ServedControlPlane]:
    with ServedControlPlane(repository, inventory, module_db_url, isolation="thread") as served:
        yield served


def kcloud(server: ServedControlPlane | None, *args: str):
    url = ["--url", server.url] if server is not None else []
    return runner.invoke(app, [*args, *url], env=WIDE)


def test_create_list_show_explain_scale_update_delete(server):
    created = kcloud(
        server, "deploy", "create", "small", "--name", "cli", "--replicas", "2", "--vendor", "furiosa"
    )
    assert created.exit_code == 0, created.output
    assert "cli  small v1  ready  2/2 running" in created.output
    assert (
        "npu-a/rngd0" in created.output and "npu-a/rngd1" in created.output and "emulated" in created.output
    )

    listed = kcloud(server, "deploy", "list")
    assert listed.exit_code == 0 and "cli" in listed.output and "2/2" in listed.output

    explained = kcloud(server, "placement", "explain", "cli")
    assert explained.exit_code == 0, explained.output
    assert "chosen for 1 replica(s): perf/watt 196.2 samples/J (modelled)" in explained.output
    assert "rejected: vendor rebellions, the deployment wants furiosa" in explained.output
    assert "rejected: vendor cpu, the deployment wants furiosa" in explained.output

    scaled = kcloud(server, "deploy", "scale", "cli", "1")
    assert scaled.exit_code == 0 and "1/1 running" in scaled.output
    updated = kcloud(server, "deploy", "update", "cli", "--clear-constraints", "--policy", "binpack")
    assert updated.exit_code == 0 and "policy binpack" in updated.output
    shown = kcloud(server, "deploy", "show", "cli", "--json")
    assert shown.exit_code == 0 and '"generation": 2' in shown.output

    deleted = kcloud(server, "deploy", "delete", "cli")
    assert deleted.exit_code == 0 and "deleted cli" in deleted.output
    gone = kcloud(server, "deploy", "show", "cli")
    assert gone.exit_code == 1 and "404: deployment 'cli' not found" in gone.output


def test_pending_is_reported_with_its_reason(server):
    result = kcloud(server, "deploy", "create", "big", "--name", "cli-big", "--chip", "rebellions-atom-ca22")
    assert result.exit_code == 0
    assert "pending" in result.output and "needs 20.0 GiB; largest free 16.0 GiB" in result.output
    assert "nothing fits yet" in result.output
    assert kcloud(server, "deploy", "delete", "cli-big").exit_code == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("deploy", "create", "nope"), 1, "404: model 'nope' not found"),
        (("deploy", "create", "small", "--replicas", "-1"), 2, "--replicas must be >= 0, got -1"),
        (
            ("deploy", "create", "small", "--chip", "furiosa-rngd", "--vendor", "rebellions"),
            1,
            "422: constraints contradict each other",
        ),
        (("deploy", "create", "small", "--precision", "fp4"), 1, "400: constraints.precision"),
        (("deploy", "scale", "nope", "2"), 1, "404: deployment 'nope' not found"),
        (("deploy", "update", "nope"), 2, "nothing to change"),
        (("placement", "explain", "nope"), 1, "404: deployment 'nope' not found"),
    ],
)
def test_bad_input_is_one_red_line(server, args, code, message):
    result = kcloud(server, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert kcloud(server, "deploy", "list").exit_code == 0  # the server is still up


def test_no_server_is_a_clear_error():
    result = runner.invoke(app, ["deploy", "list", "--url", "http://127.0.0.1:9"], env=WIDE)
    assert result.exit_code == 1
    assert "cannot reach the kcloud server at http://127.0.0.1:9 (is `kcloud up` running?)" in result.output


def test_devices_drain_and_undrain(server):
    kcloud(server, "deploy", "create", "small", "--name", "on-x220", "--chip", "sapeon-x220-enterprise")
    drained = kcloud(server, "devices", "drain", "npu-b/x220-0", "--reason", "fan replaced")
    assert drained.exit_code == 0, drained.output
    assert "npu-b/x220-0: drained (fan replaced), healthy" in drained.output
    # Its only replica leaves the drained device; the chip constraint leaves nowhere else to go.
    deadline = time.monotonic() + 30
    while (view := httpx.get(f"{server.url}/api/v1/deployments/on-x220").json())["replica_list"]:
        assert time.monotonic() < deadline, view
        time.sleep(0.1)  # the reconciler works in the background; poll its result
    assert view["status"] == "pending" and "1 drained" in view["reason"]
    undrained = kcloud(server, "devices", "undrain", "npu-b/x220-0")
    assert undrained.exit_code == 0 and "npu-b/x220-0: takes replicas" in undrained.output
    unknown = kcloud(server, "devices", "drain", "nowhere/dev0")
    assert unknown.exit_code == 1 and "404: device 'nowhere/dev0' not found" in unknown.output
    assert kcloud(server, "deploy", "delete", "on-x220").exit_code == 0


def test_autoscale_create_show_events_update_and_off(server):
    created = kcloud(server, "deploy", "create", "small", "--name", "auto", "--vendor", "furiosa",
                     "--autoscale", "min=1,max=3,metric=rps,target=50,stable=10,panic=2,down-delay=5")
    assert created.exit_code == 0, created.output
    assert "1/1 running" in created.output
    assert ("autoscale: 1..3 replicas, rps target 50 per replica; windows 10 s / 2 s (panic at 2x); "
            "delays up 0 s, down 5 s") in created.output
    events = kcloud(server, "deploy", "events", "auto", "--kind", "deployment")
    assert events.exit_code == 0, events.output
    assert "deployment.created" in events.output and "autoscaled 1..3 replicas on rps" in events.output
    refused = kcloud(server, "deploy", "scale", "auto", "2")
    assert refused.exit_code != 0 and "autoscaled between 1 and 3" in refused.output
    updated = kcloud(server, "deploy", "update", "auto", "--autoscale", "min=2,max=2,target=8")
    assert updated.exit_code == 0, updated.output
    assert "2/2 running" in updated.output and "autoscale: 2..2 replicas, ongoing target 8" in updated.output
    off = kcloud(server, "deploy", "update", "auto", "--no-autoscale")
    assert off.exit_code == 0 and "autoscale:" not in off.output
    events = kcloud(server, "deploy", "events", "auto", "--kind", "autoscale", "--json")
    assert [e["kind"] for e in json.loads(events.output)] == ["autoscale.on", "autoscale.off"]
    assert kcloud(server, "deploy", "delete", "auto").exit_code == 0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("min=1,max", "'max' is not KEY=VALUE"),
        ("min=1,most=3", "unknown key 'most'"),
        ("min=one", "min='one' is not a number"),
    ],
)
def test_a_bad_autoscale_option_is_refused_before_any_call(spec: str, says: str):
    result = kcloud(None, "deploy", "create", "small", "--autoscale", spec)
    assert result.exit_code == 2 and says in result.output


def test_autoscale_and_no_autoscale_together_are_refused():
    result = kcloud(None, "deploy", "update", "x", "--autoscale", "max=2", "--no-autoscale")
    assert result.exit_code == 2 and "choose one" in result.output


def test_devices_and_farm_of_a_running_server(server):
    listed = kcloud(server, "devices")
    assert listed.exit_code == 0, listed.output
    assert "npu-a" in listed.output and "rngd0" in listed.output and "npu-b" in listed.output
    as_json = json.loads(kcloud(server, "devices", "--json").output)
    uids = {d["uid"] for d in as_json["devices"]}
    assert {"npu-a/rngd0", "npu-b/x220-0"} <= uids
    capacity = json.loads(kcloud(server, "farm", "--json").output)
    assert capacity["devices"] == len(uids) and {"npu-a", "npu-b"} <= set(capacity["by_node"])
    both = kcloud(server, "farm", "--farm", "x.toml")
    assert both.exit_code == 2 and "--farm and --url do not go together" in both.output
    down = runner.invoke(app, ["devices", "--url", "http://127.0.0.1:9"], env=WIDE)
    assert down.exit_code == 1 and "cannot reach the kcloud server" in down.output
