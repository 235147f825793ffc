"""The console in Debian's Chromium (headless, Playwright) against the real gateway: each page as
each role sees it, markup shown as text, a key revoked mid-use, and the actions a page offers."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

import pytest
from console_support import MARKUP, ConsoleFarm

pytestmark = pytest.mark.slow

EVERY_ROUTE = ("overview", "devices", "nodes", "deployments", "deployment/web-digits", "chat", "bench",
               "twin", "usage", "keys", "audit")
TEXTS = "tds => tds.map(t => t.textContent)"


def part(name: str) -> str:
    """A name as one part of a route (device uids and run ids hold `/`), as the page's links write it."""
    return quote(name, safe="")


def nav(page) -> list[str]:
    return page.eval_on_selector_all("#nav a", "links => links.map(a => a.id.replace('nav-', ''))")


def no_error_and_no_script_ran(page) -> None:
    assert page.locator("#main .error").count() == 0, page.locator("#main .error").all_inner_texts()
    assert page.evaluate("window.__kcPwned") is None


def test_sign_in_then_every_page_as_admin(open_page, console_farm: ConsoleFarm) -> None:
    page = open_page(None)
    page.wait_for_selector("#login:not([hidden])")
    assert page.locator("#main").inner_text() == ""
    page.fill("#key", "kc_wrong")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-message:not(:empty)")
    page.fill("#key", console_farm.keys["admin"])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#page-overview[data-ready]", state="attached")
    assert "admin" in page.inner_text("#who")
    assert nav(page) == ["overview", "devices", "nodes", "deployments", "chat", "bench", "twin", "usage",
                         "keys", "audit"]
    a, b = console_farm.runs
    with console_farm.client("admin") as admin:
        device = next(d["uid"] for d in admin.get("/api/v1/console/devices").json() if d["emulated"])
    for route in (*EVERY_ROUTE, f"device/{part(device)}", f"twin-run/{part(console_farm.twin_run)}",
                  f"run/{part(a)}", f"compare/{part(a)}/{part(b)}"):
        page.goto(f"{console_farm.url}/ui/#/{route}")
        name = route.split("/")[0]
        page.wait_for_selector(f"#page-{name}[data-ready]", state="attached")
        no_error_and_no_script_ran(page)
    assert page.locator("#compare-table tbody tr").count() > 3


def test_overview_shows_capacity_and_unknowns(open_page) -> None:
    page = open_page("admin")
    text = page.inner_text("#page-overview")
    for label in ("private", "public", "NHN Cloud", "furiosa", "emulated", "real"):
        assert label in text, label
    assert "unknown" in text  # Sapeon's compute is not published: counted as unknown, not 0


def test_devices_table_filters_and_sorts(open_page) -> None:
    page = open_page("admin", "devices")
    total = int(page.get_attribute("#device-count", "data-total"))
    assert page.locator("#devices tbody tr").count() == total  # a small farm: every row at once
    assert page.locator("#devices-more").count() == 0
    page.select_option("#filter-vendor", "rebellions")
    chips = page.eval_on_selector_all("#devices tbody tr td:nth-child(4)", TEXTS)
    assert chips and all(chip.startswith("rebellions-") for chip in chips)
    assert f"{len(chips)} of {total} devices" in page.inner_text("#device-count")
    page.click("#devices th[data-key=power_watts]")
    assert page.get_attribute("#devices th[data-key=power_watts]", "class").endswith("sorted-asc")
    modelled = page.locator("#devices tbody td.modelled").count()
    blank = page.locator("#devices tbody td.unknown").count()
    assert modelled > 0 and blank > 0  # emulated readings marked; temperature has no sensor: blank


def test_a_twin_run_shows_its_modelled_figures_and_plots(open_page, console_farm: ConsoleFarm) -> None:
    page = open_page("admin", "twin")
    assert page.locator("#twin-runs tbody tr").count() == 1
    assert page.locator("#twin-runs td.modelled").count() >= 3  # offered, answered and refused: modelled
    page.click("#twin-runs tbody a")
    page.wait_for_selector("#page-twin-run[data-ready]", state="attached")
    assert "MODELLED" in page.inner_text("#page-twin-run")
    names = page.eval_on_selector_all("#twin-deployments tbody tr td:first-child", TEXTS)
    assert names == ["minilm", "digits"]
    assert page.locator("#twin-plots .main-svg").count() >= 3  # plotly drew each figure
    assert page.locator("#twin-devices tbody tr").count() > 0
    no_error_and_no_script_ran(page)


def test_chat_models_page_says_when_there_are_none(open_page) -> None:
    page = open_page("admin", "chat")
    assert "No chat models are deployed." in page.inner_text("#chat-models")
    no_error_and_no_script_ran(page)


def test_a_tenant_member_sees_its_own_and_no_admin_action(open_page, console_farm: ConsoleFarm) -> None:
    page = open_page("alpha", "deployments")
    assert "bench" not in nav(page) and "twin" not in nav(page)
    names = page.eval_on_selector_all("#deployments tbody tr td:first-child", TEXTS)
    assert names == ["alpha:mini"]
    assert page.locator("#create-deployment").count() == 1
    device = page.get_attribute("#nav-devices", "href")
    assert device
    page.goto(f"{console_farm.url}/ui/#/bench")
    page.wait_for_selector("#page-bench[data-ready]", state="attached")
    assert "farm-wide" in page.inner_text("#page-bench")  # the API's refusal, shown; no results
    page.goto(f"{console_farm.url}/ui/#/deployment/beta:digits")
    page.wait_for_selector("#page-deployment[data-ready]", state="attached")
    assert "404: deployment 'beta:digits' not found" in page.inner_text("#page-deployment")  # as if none
    page.goto(f"{console_farm.url}/ui/#/devices")
    page.wait_for_selector("#page-devices[data-ready]", state="attached")
    page.click("#devices tbody tr a")
    page.wait_for_selector("#page-device[data-ready]", state="attached")
    assert page.locator("#drain, #undrain").count() == 0


def test_a_read_only_key_sees_no_action(open_page) -> None:
    page = open_page("alpha-readonly", "deployments")
    assert page.locator("#create-deployment").count() == 0
    page.click("#deployments tbody a")
    page.wait_for_selector("#page-deployment[data-ready]", state="attached")
    assert page.locator("#scale, #delete").count() == 0
    page.click("#nav-keys")
    page.wait_for_selector("#page-keys[data-ready]", state="attached")
    assert page.locator("#create-key, [data-revoke]").count() == 0
    no_error_and_no_script_ran(page)


def test_markup_in_names_is_shown_as_text(open_page, console_farm: ConsoleFarm) -> None:
    """A key name, a tenant's description and a drain reason holding <script> and an <img onerror>:
    each shows its characters and nothing runs."""
    with console_farm.client("admin") as admin:
        device = next(d["uid"] for d in admin.get("/api/v1/console/devices").json() if d["emulated"])
        assert admin.post(f"/api/v1/devices/{device}/drain", json={"reason": MARKUP}).status_code == 200
    try:
        page = open_page("admin", "keys")
        assert MARKUP in page.inner_text("#keys")
        page.click("#nav-usage")
        page.wait_for_selector("#page-usage[data-ready]", state="attached")
        assert f"alpha {MARKUP}" in page.inner_text("#tenants")
        page.goto(f"{console_farm.url}/ui/#/device/{part(device)}")
        page.wait_for_selector("#page-device[data-ready]", state="attached")
        assert MARKUP in page.inner_text("#device-state")
        assert page.locator("#main script, #main img").count() == 0
        no_error_and_no_script_ran(page)
    finally:
        with console_farm.client("admin") as admin:
            admin.post(f"/api/v1/devices/{device}/undrain")


def test_a_key_revoked_mid_use_returns_to_the_login(open_page, console_farm: ConsoleFarm) -> None:
    with console_farm.client("admin") as admin:
        made = admin.post("/api/v1/keys", json={"tenant": "alpha", "name": "short-lived"}).json()
    console_farm.keys["short-lived"] = made["key"]
    page = open_page("short-lived", "overview")
    assert page.locator("#traffic").count() == 1
    with console_farm.client("admin") as admin:
        assert admin.delete(f"/api/v1/keys/{made['info']['prefix']}").status_code == 200
    page.wait_for_selector("#login:not([hidden])", timeout=15_000)  # the next live refresh gets a 401
    assert page.locator("#main").inner_text() == ""
    assert page.is_hidden("#top")
    assert page.evaluate("sessionStorage.getItem('kcloud.key')") is None


def test_admin_drains_and_undrains_a_device(open_page, console_farm: ConsoleFarm) -> None:
    with console_farm.client("admin") as admin:
        device = next(d["uid"] for d in admin.get("/api/v1/console/devices").json()
                      if d["emulated"] and d["state"] == "healthy")
    page = open_page("admin", f"device/{part(device)}")
    page.fill("#drain-reason", "maintenance window")
    page.click("#drain")
    page.wait_for_selector("#undrain")
    state = page.inner_text("#device-state")
    assert "draining" in state and "maintenance window" in state
    page.click("#undrain")
    page.wait_for_selector("#drain")
    assert "healthy" in page.inner_text("#device-state")


def test_a_member_creates_scales_and_deletes_a_deployment(open_page) -> None:
    page = open_page("alpha", "deployments")
    page.fill("#create-deployment input[name=model]", "noop")
    page.fill("#create-deployment input[name=name]", "console-made")
    page.click("#create-deployment button[type=submit]")
    page.wait_for_selector("#page-deployment[data-ready]", state="attached")
    assert "alpha:console-made" in page.inner_text("h1")
    page.fill("#scale input[name=replicas]", "0")
    page.click("#scale button[type=submit]")
    status = "() => document.querySelector('#deployment-status')?.textContent.includes('0 of 0')"
    page.wait_for_function(status)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_selector("#page-deployments[data-ready]", state="attached")
    names = page.eval_on_selector_all("#deployments tbody tr td:first-child", TEXTS)
    assert "alpha:console-made" not in names


def test_an_admin_creates_a_key_shown_once_and_exports_usage(open_page, console_farm: ConsoleFarm) -> None:
    page = open_page("admin", "keys")
    page.fill("#create-key input[name=name]", "made in the console")
    page.fill("#create-key input[name=tenant]", "beta")
    page.click("#create-key button[type=submit]")
    secret = page.inner_text("#new-key")
    assert secret.startswith("kc_")
    page.click("#nav-overview")
    page.wait_for_selector("#page-overview[data-ready]", state="attached")
    page.click("#nav-keys")
    page.wait_for_selector("#page-keys[data-ready]", state="attached")
    assert page.locator("#new-key").count() == 0 and secret not in page.content()
    with console_farm.client() as anyone:  # the key works
        assert anyone.get("/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    page.click("#nav-usage")
    page.wait_for_selector("#page-usage[data-ready]", state="attached")
    with page.expect_download() as download:
        page.click("#usage-csv")
    rows = list(csv.reader(io.StringIO(download.value.path().read_text())))
    assert rows[0][:4] == ["day", "tenant", "key", "deployment"]


@pytest.mark.parametrize("who", ["alpha", "alpha-readonly"])
def test_every_page_a_tenant_may_open(open_page, console_farm: ConsoleFarm, who: str) -> None:
    """A tenant's member and read-only keys: every page draws, with the tenant's own records only."""
    with console_farm.client("admin") as admin:
        device = next(d["uid"] for d in admin.get("/api/v1/console/devices").json() if d["emulated"])
    page = open_page(who)
    assert nav(page) == ["overview", "devices", "nodes", "deployments", "chat", "usage", "keys", "audit"]
    assert page.inner_text("#who").endswith("tenant alpha")
    for route in ("overview", "devices", f"device/{part(device)}", "nodes", "deployments",
                  f"deployment/{part('alpha:mini')}", "chat", "usage", "keys", "audit"):
        page.goto(f"{console_farm.url}/ui/#/{route}")
        page.wait_for_selector(f"#page-{route.split('/')[0]}[data-ready]", state="attached")
        no_error_and_no_script_ran(page)
        if route == "usage":
            assert "Usage of tenant alpha." in page.inner_text("#page-usage")
            assert page.locator("#tenants").count() == 0  # the tenant list is the operator's
        if route == "keys":
            tenants = page.eval_on_selector_all("#keys tbody td:nth-child(4)", TEXTS)
            assert tenants and set(tenants) == {"alpha"}
        if route == "audit":
            tenants = page.eval_on_selector_all("#audit tbody td:nth-child(4)", TEXTS)
            assert set(tenants) <= {"alpha"}
