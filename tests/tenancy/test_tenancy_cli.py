"""`kcloud tenants|keys|usage|audit` against the real gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from tenancy_support import SERVER_SECRET, infer_body
from typer.testing import CliRunner

from kcloud.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def kcloud(gateway, keys):
    """Run `kcloud ...` (in process, over HTTP to the gateway) with the admin key unless told otherwise."""
    runner = CliRunner()

    def run(*args: str, key: str | None = keys["admin"], input: str | None = None):
        env = {"KCLOUD_URL": gateway.url, "KCLOUD_API_KEY": key or "", "COLUMNS": "200"}
        return runner.invoke(app, list(args), env=env, input=input)

    return run


def test_tenant_and_key_lifecycle_through_the_cli(gateway, kcloud):
    made = kcloud("tenants", "create", "cli-co", "--description", "made by the CLI", "--max-replicas", "4",
                  "--max-devices-vendor", "rebellions=2", "--rate", "50", "--burst", "100")
    assert made.exit_code == 0, made.output
    assert "created tenant cli-co" in made.output and "rebellions=2" in made.output
    listed = kcloud("tenants", "list")
    assert listed.exit_code == 0 and "cli-co" in listed.output
    quota = kcloud("tenants", "quota", "cli-co", "--max-devices", "3", "--unset", "max_replicas")
    assert quota.exit_code == 0, quota.output
    shown = kcloud("tenants", "show", "cli-co", "--json")
    assert '"max_devices": 3' in shown.output and '"max_replicas": null' in shown.output
    assert '"requests_per_second": 50' in shown.output  # kept

    created = kcloud("keys", "create", "--tenant", "cli-co", "--name", "ci bot", "--expires-in", "30")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("kc_")
    prefix = key.split("_")[1]
    with gateway.client(key) as client:  # the printed key works
        assert client.get("/api/v1/whoami").json() == {"actor": f"key:{prefix}", "role": "member",
                                                       "tenant": "cli-co", "insecure": False}
    listed = kcloud("keys", "list", "--tenant", "cli-co")
    assert listed.exit_code == 0 and prefix in listed.output and "active" in listed.output
    assert key not in listed.output  # a listing never shows a secret
    revoked = kcloud("keys", "revoke", key)  # the whole key works as well as the prefix
    assert revoked.exit_code == 0 and f"revoked key {prefix}" in revoked.output
    with gateway.client(key) as client:
        assert client.get("/api/v1/whoami").status_code == 401
    assert "revoked" in kcloud("keys", "list", "--tenant", "cli-co").output
    deleted = kcloud("tenants", "delete", "cli-co", input="y\n")
    assert deleted.exit_code == 0, deleted.output
    audit = kcloud("audit", "--action", "tenant.delete")
    assert audit.exit_code == 0 and "cli-co" in audit.output


def test_usage_through_the_cli(gateway, keys, kcloud):
    with gateway.client(keys["alpha"]) as alpha:
        for _ in range(3):
            assert alpha.post("/v2/models/alpha-model/infer", json=infer_body(2)).status_code == 200
    table = kcloud("usage", "--tenant", "alpha", "--by", "tenant,deployment")
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "alpha-model" in line)
    assert "alpha" in row
    as_json = kcloud("usage", "--deployment", "alpha-model", "--by", "deployment", "--json",
                     key=keys["alpha"])
    assert as_json.exit_code == 0
    import json

    (record,) = json.loads(as_json.stdout)
    assert record["deployment"] == "alpha-model" and record["requests"] >= 3 and record["samples"] >= 6
    assert record["device_seconds"] > 0


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (("tenants", "list"), "", "no API key"),
        (("tenants", "list"), "kc_garbage", "401: malformed API key"),
        (("tenants", "create", "Bad Name"), None, "400: tenant name"),
        (("tenants", "create", "x", "--max-devices-vendor", "rebellions"), None, "VENDOR=N"),
        (("tenants", "show", "nobody"), None, "404: tenant 'nobody' not found"),
        (("keys", "create", "--role", "owner"), None, "--role must be"),
        (("keys", "create", "--role", "member"), None, "400: a member key needs a tenant"),
        (("keys", "revoke", "zzzzzzzzzzzz"), None, "404: no key"),
        (("usage", "--since", "yesterday"), None, "--since 'yesterday' is not a date"),
        (("usage", "--by", "colour"), None, "400: group_by"),
        (("tenants", "create", "gamma"), "alpha", "403: only an admin"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_1(kcloud, keys, args, key, message):
    if key is not None and key in keys:
        key = keys[key]
    result = kcloud(*args, key=key) if key is not None else kcloud(*args)
    assert result.exit_code == 1, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_cli_says_when_the_server_is_unreachable(kcloud):
    runner = CliRunner()
    result = runner.invoke(app, ["tenants", "list", "--url", "http://127.0.0.1:1"],
                           env={"KCLOUD_API_KEY": "kc_x"})
    assert result.exit_code == 1 and "cannot reach the kcloud server" in result.output


def test_break_glass_admin_key_from_the_servers_machine(gateway, db_url, monkeypatch, tmp_path):
    """`kcloud keys create-admin` writes an admin key straight into the server's database; the
    running server accepts it (same database, same server secret)."""
    monkeypatch.setenv("KCLOUD_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["keys", "create-admin", "--db", db_url],
                                env={"KCLOUD_KEY_SECRET": SERVER_SECRET})
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    with gateway.client(key) as client:
        assert client.get("/api/v1/whoami").json()["role"] == "admin"
        entries = client.get("/api/v1/audit", params={"action": "key.create-admin"}).json()
    assert entries and entries[0]["target"] == key.split("_")[1]
    bad = CliRunner().invoke(app, ["keys", "create-admin", "--db", "nonsense://"],
                             env={"KCLOUD_KEY_SECRET": SERVER_SECRET})
    assert bad.exit_code == 1 and "Traceback" not in bad.output
