"""`forkproxy top` grouped by app: one real proxy with two fork-mode apps."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from forkproxy.proxy import top
from tests.conftest import ROOT
from tests.proxy.admin.helpers import sample_after
from tests.proxy.apps.test_apps_e2e import config, running


async def test_top_groups_instances_by_app_and_shows_the_budget() -> None:
    async with running(config("60s", budget={"max_instances": 4})) as c:
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        admin = f"http://127.0.0.1:{c.proxy.admin_port}"
        sample = await sample_after(admin, time.time())  # both instances in it
        grouped = top.by_app(sample)
        assert list(grouped) == ["shop", "blog"]
        for app in grouped:
            ids = [i["id"] for i in await c.instances(app)]
            assert [r["id"] for r in grouped[app]] == ids and len(ids) == 1
        assert top.rows(sample) == grouped["shop"]  # the top-level table: the first app's

        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "forkproxy", "top", "--once", admin],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert any("apps · budget instances 2/4, memory" in ln for ln in lines), out.stdout
        # the summary is the whole machine's: both apps' instances, and each app's settings
        assert "forkproxy 2 apps · process" in lines[0], out.stdout
        assert any(ln.startswith("instances") and "2 live (2 ready" in ln for ln in lines), (
            out.stdout
        )
        for app in ("shop", "blog"):
            assert any(ln.startswith(f"settings · {app} (") for ln in lines), out.stdout
        # each app's row in the apps table, then its instances under its own title
        app_rows = {ln.split("│")[1].strip(): ln for ln in lines if ln.count("│") > 8}
        assert {"shop", "blog"} <= set(app_rows)
        shop_at = next(i for i, ln in enumerate(lines) if "instances · shop" in ln)
        blog_at = next(i for i, ln in enumerate(lines) if "instances · blog" in ln)
        assert shop_at < blog_at
        (shop_id,) = (r["id"] for r in grouped["shop"])
        (blog_id,) = (r["id"] for r in grouped["blog"])
        assert any(shop_id in ln for ln in lines[shop_at:blog_at])
        assert any(blog_id in ln for ln in lines[blog_at:])


def test_a_sample_from_before_apps_is_one_group() -> None:
    sample = {"pool": "edge", "instances": []}
    assert top.by_app(sample) == {"edge": []}
