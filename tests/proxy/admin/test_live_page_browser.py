"""The live page in headless Chromium against a proxy under load: the chart shows the
pool scaling out, and the page's table agrees with the stream, `top` and /instances.
Skipped (with the reason) without Debian's chromium + chromium-driver unless
FORKPROXY_REQUIRE_BROWSER=1; FORKPROXY_UPDATE_SCREENSHOT=1 refreshes docs/live-page.png."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from forkproxy.proxy import top
from tests.conftest import ROOT, eventually, run_proxy
from tests.proxy.admin.helpers import POOL, bounded_load, sample_after, table_key
from tests.proxy.apps.test_apps_e2e import config, running

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = ROOT / "docs" / "live-page.png"
TOKEN = "browser-test-token"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1500",
)

if not (CHROMIUM and DRIVER):
    reason = "needs Debian's chromium and chromium-driver (apt-get install the two)"
    if os.environ.get("FORKPROXY_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"FORKPROXY_REQUIRE_BROWSER=1 but no browser: {reason}")
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only importable where the browser test runs
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

_TABLE_JS = """
const t = document.getElementById('instances');
return {seq: Number(t.dataset.seq || 0),
        rows: [...t.tBodies[0].rows].map(tr => [...tr.cells].map(c => c.textContent))};
"""


def _browser(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    # the Debian driver, never one Selenium Manager would try to download
    return webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))


def _page_rows(rows: list[list[str]]) -> list[tuple[str, str, str, int, int, str]]:
    # id, backend, state, in flight, served, age, idle, endpoint, owner
    return sorted((r[0], r[1], r[2], int(r[3]), int(r[4]), r[7]) for r in rows)


async def test_live_page_under_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORKPROXY_TEST_ADMIN_TOKEN", TOKEN)
    server = {"admin_token_env": "FORKPROXY_TEST_ADMIN_TOKEN"}
    async with run_proxy(server=server, pool=POOL) as p:
        driver = await asyncio.to_thread(_browser, tmp_path / "profile")
        try:
            # a browser cannot send the bearer header: the login URL sets the cookie
            await asyncio.to_thread(driver.get, f"{p.admin}/?token={TOKEN}")
            assert driver.current_url.rstrip("/") == p.admin
            base = asyncio.gather(bounded_load(p.url, workers=3, seconds=12))

            async def burst() -> int:
                await asyncio.sleep(3)
                return await bounded_load(p.url, workers=6, seconds=5)

            spike = asyncio.gather(burst())
            try:

                def chart_peak() -> int:
                    canvas = driver.find_element("id", "chart-instances")
                    return int(canvas.get_attribute("data-peak") or 0)

                wait = WebDriverWait(driver, 30, poll_frequency=0.2)
                await asyncio.to_thread(wait.until, lambda _: chart_peak() > 1)
                await asyncio.sleep(6)  # let the chart draw the ramp, then photograph it
                shot = tmp_path / "live-page.png"
                assert await asyncio.to_thread(driver.save_screenshot, str(shot))
                png = shot.read_bytes()
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
                if os.environ.get("FORKPROXY_UPDATE_SCREENSHOT") == "1":
                    shutil.copyfile(shot, SCREENSHOT)
            finally:
                served = sum(await base) + sum(await spike)
            assert served > 0
            assert chart_peak() > 1
            # the effective settings and the load's start counts are on the page too
            text = driver.find_element("tag name", "body").text
            assert "max_concurrency" in text and "lower bound" in text

            # same moment: once the pool is quiet, page, stream, top and /instances agree
            pool = p.proxy.pool
            await eventually(
                lambda: pool.queued == 0 and all(r["in_flight"] == 0 for r in pool.describe()),
                10,
                "load to drain",
            )
            settled = time.time()
            sample = await sample_after(p.admin, settled, TOKEN)
            await asyncio.to_thread(
                WebDriverWait(driver, 10, poll_frequency=0.2).until,
                lambda d: d.execute_script(_TABLE_JS)["seq"] >= sample["seq"],
            )
            page = await asyncio.to_thread(driver.execute_script, _TABLE_JS)
            async with p.session.get(
                p.admin + "/instances", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                listed = (await r.json())["instances"]
            assert len(listed) > 1
            expected = sorted(map(table_key, listed))
            assert _page_rows(page["rows"]) == expected
            assert sorted(map(table_key, sample["instances"])) == expected
            assert sorted(map(table_key, top.rows(sample))) == expected
            assert {r[8] for r in page["rows"]} == {p.proxy.owner_id}
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            await asyncio.to_thread(driver.quit)


_APPS_JS = """
const t = document.getElementById('apps');
const row = tr => [...tr.cells].map(c => c.textContent);
return {seq: Number(t.dataset.seq || 0),
        apps: [...t.tBodies[0].rows].map(row),
        budget: [...document.getElementById('budget').tBodies[0].rows].map(row)};
"""


async def test_live_page_shows_every_app_and_the_budget(tmp_path: Path) -> None:
    # two fork-mode apps under one budget: shop busy (a slow request), blog idle
    cfg = config("60s", budget={"max_instances": 4, "max_memory": "1000g"})
    async with running(cfg) as c:
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        driver = await asyncio.to_thread(_browser, tmp_path / "profile")
        try:
            admin = f"http://127.0.0.1:{c.proxy.admin_port}"
            await asyncio.to_thread(driver.get, admin + "/")
            async with asyncio.TaskGroup() as tg:
                slow = tg.create_task(c.get("shop.test", "/?sleep=6"))

                def shown(d: Any) -> Any:
                    page = d.execute_script(_APPS_JS)
                    rows = {r[0]: r for r in page["apps"]}
                    shop, blog = rows.get("shop"), rows.get("blog")
                    ok = (
                        shop is not None
                        and blog is not None
                        and shop[2] == "1"  # busy
                        and blog[3] == "1"  # idle
                        and "MiB" in blog[7]  # its instance measured
                        and blog[8].startswith("up · ")  # its template, measured
                    )
                    return page if ok else None

                page = await asyncio.to_thread(
                    WebDriverWait(driver, 30, poll_frequency=0.2).until, shown
                )
                assert await slow == (200, "shop /")
            rows = {r[0]: r for r in page["apps"]}
            # app, backend, busy, idle, starting, queued, req/s, memory, template
            assert list(rows) == ["shop", "blog"]
            assert rows["shop"][1] == rows["blog"][1] == "process"
            assert rows["shop"][4] == rows["shop"][5] == "0"
            budget = {r[0]: r[1:] for r in page["budget"]}
            assert budget["instances"] == ["2", "4"]
            used, limit = budget["memory"]
            assert used.endswith("MiB") and limit == "1000.00 GiB"
            text = driver.find_element("tag name", "body").text
            assert "click a row to chart that app" in text
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            await asyncio.to_thread(driver.quit)


_CHARTS_JS = """
const c = id => document.getElementById(id).dataset;
return {app: document.querySelector('section.charts').dataset.app,
        seq: Number(document.getElementById('apps').dataset.seq || 0),
        picked: document.getElementById('app-select').value,
        points: Number(c('chart-instances').points || 0),
        instances: Number(c('chart-instances').peak || 0),
        requests: Number(c('chart-requests').peak || 0),
        rows: [...document.getElementById('instances').tBodies[0].rows].map(
            tr => tr.cells[9].textContent),
        settings: document.getElementById('settings').dataset.app,
        heading: document.getElementById('pool').textContent,
        hash: location.hash};
"""

# the table is rebuilt with every sample: a row found, then clicked in a second round
# trip, can be gone by then (stale); find and click it in one turn of the page's loop
_CLICK_JS = "document.querySelector(`#apps tr[data-app='${arguments[0]}']`).click();"


async def test_live_page_charts_the_app_picked(tmp_path: Path) -> None:
    # two fork-mode apps; traffic goes to blog (the second) only
    async with running(config("60s")) as c:
        driver = await asyncio.to_thread(_browser, tmp_path / "profile")
        admin = f"http://127.0.0.1:{c.proxy.admin_port}"

        async def charts(ok: Any, timeout: float = 30) -> dict[str, Any]:
            def ready(d: Any) -> Any:
                page = d.execute_script(_CHARTS_JS)
                return page if page["seq"] > 0 and ok(page) else None

            wait = WebDriverWait(driver, timeout, poll_frequency=0.2)
            return dict(await asyncio.to_thread(wait.until, ready))

        try:
            await asyncio.to_thread(driver.get, admin + "/")
            # the default: the whole machine, every app summed
            page = await charts(lambda p: p["points"] >= 1)
            assert (page["app"], page["picked"], page["hash"]) == ("*", "*", "")
            assert page["settings"] == "shop"  # settings do not sum: the first app's
            assert page["heading"].startswith("2 apps · process · owner "), page["heading"]
            async with asyncio.TaskGroup() as tg:
                slow = [tg.create_task(c.get("blog.test", "/blog/?sleep=5")) for _ in range(3)]
                # pick blog by clicking its row of the Apps table
                await asyncio.to_thread(driver.execute_script, _CLICK_JS, "blog")
                page = await charts(lambda p: p["app"] == "blog" and p["requests"] >= 3)
                assert page["picked"] == "blog" and page["hash"] == "#app=blog"
                assert page["settings"] == "blog"  # the settings panel follows the pick
                assert page["heading"].startswith("blog · process · owner "), page["heading"]
                assert page["instances"] >= 1
                assert set(page["rows"]) == {"blog"}  # the instances table follows too
            assert [await t for t in slow] == [(200, "blog /blog/")] * 3

            # shop, picked in the selector: flat over the same minutes of history
            await asyncio.to_thread(
                Select(driver.find_element("id", "app-select")).select_by_value, "shop"
            )
            page = await charts(lambda p: p["app"] == "shop")
            assert page["hash"] == "#app=shop"
            assert page["points"] >= 5 and page["requests"] == 0 and page["instances"] == 0
            assert page["rows"] == []

            # a reload keeps the choice (the hash) and replays blog's history
            await asyncio.to_thread(driver.get, admin + "/#app=blog")
            await asyncio.to_thread(driver.refresh)
            page = await charts(lambda p: p["requests"] >= 3)
            assert (page["app"], page["picked"]) == ("blog", "blog")

            # clicking the picked row again goes back to the machine, which holds blog's load
            await asyncio.to_thread(driver.execute_script, _CLICK_JS, "blog")
            page = await charts(lambda p: p["app"] == "*")
            assert page["hash"] == "" and page["requests"] >= 3 and page["instances"] >= 1
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            await asyncio.to_thread(driver.quit)
