"""The config of apps: today's single-app file is one app; [apps.NAME] tables; every
problem named by its key path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from forkproxy.backends.support.table import ConfigError
from forkproxy.proxy.apps import app_config, pool_name, serves_everything
from forkproxy.proxy.cli import main
from forkproxy.proxy.config import load, parse


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(data, from_file=True)
    return {p.path: p.message for p in info.value.problems}


def two_apps(**extra: Any) -> dict[str, Any]:
    return {
        "apps": {
            "shop": {
                "hosts": ["shop.test", "*.shop.test"],
                "backend": {"app": "shop:app"},
                "pool": {"max_instances": 3},
            },
            "blog": {
                "hosts": ["blog.test"],
                "path_prefix": "/blog",
                "backend": {"app": "blog:app"},
            },
        },
        **extra,
    }


def test_a_single_app_file_is_one_app_on_every_host() -> None:
    cfg = parse({"pool": {"max_instances": 4}, "backend": {"app": "a:b"}}, from_file=True)
    (app,) = cfg.apps
    assert app.name == "default" and app.hosts == ("*",)
    assert app.pool.max_instances == 4 and app.backend.app == "a:b"
    assert serves_everything(cfg.apps, cfg.default_app)
    assert pool_name("forkproxy", app, 1) == "forkproxy"  # owned instances keep their label
    # the single app follows pool/backend replaced in code, as before apps existed
    other = replace(cfg, pool=replace(cfg.pool, max_instances=7))
    assert other.apps[0].pool.max_instances == 7


def test_two_apps() -> None:
    cfg = parse(two_apps(default_app="blog", budget={"max_instances": 5}), from_file=True)
    shop, blog = cfg.apps
    assert shop.hosts == ("shop.test", "*.shop.test") and shop.pool.max_instances == 3
    assert blog.path_prefix == "/blog" and blog.backend.app == "blog:app"
    assert cfg.default_app == "blog" and cfg.budget.max_instances == 5
    assert not serves_everything(cfg.apps, "")
    assert cfg.pool == shop.pool and cfg.backend == shop.backend  # single-app readers
    one = app_config(cfg, blog)
    assert one.server.name == "forkproxy-blog" and one.backend.app == "blog:app"
    assert one.apps == (blog,)


def test_problems_are_named_by_key_path() -> None:
    data = two_apps(default_app="nope", budget={"max_instances": -1})
    data["apps"]["shop"]["backend"] = {"type": "process"}  # fork mode without an app
    data["apps"]["shop"]["pool"] = {"max_instances": "x", "bogus": 1}
    data["apps"]["blog"]["path_prefix"] = "blog"
    data["apps"]["blog"]["hosts"] = ["blog.test:80", "*"]
    data["apps"]["bad name"] = {"hosts": ["x.test"], "backend": {"app": "x:y"}}
    data["apps"]["nohosts"] = {"backend": {"app": "x:y"}, "color": 1}
    found = problems(data)
    assert found["apps.shop.backend.app"].startswith("missing: name your app")
    assert "apps.shop.pool.max_instances" in found
    assert "unknown key" in found["apps.shop.pool.bogus"]
    assert "must start with '/'" in found["apps.blog.path_prefix"]
    assert "'blog.test:80'" in found["apps.blog.hosts"]
    assert "letters, digits" in found["apps.bad name"]
    assert found["apps.nohosts.hosts"].startswith("missing")
    assert "unknown key" in found["apps.nohosts.color"]
    assert "'nope' is not an app" in found["default_app"]
    assert "budget.max_instances" in found


def test_overlaps_and_mixed_forms_are_refused() -> None:
    data = two_apps(backend={"app": "a:b"})
    data["apps"]["blog"]["hosts"] = ["shop.test"]
    data["apps"]["blog"]["path_prefix"] = ""
    found = problems(data)
    assert "'shop.test' is served by app 'shop' already" in found["apps.blog.hosts"]
    assert "[apps.NAME.backend]" in found["backend"]
    assert "empty" in problems({"apps": {}})["apps"]


def test_bad_budget_values_name_the_key_and_what_is_allowed() -> None:
    found = problems(two_apps(budget={"max_memory": "lots", "max_instance": 3}))
    assert '"64k", "10m", "1g"' in found["budget.max_memory"]
    assert "did you mean max_instances" in found["budget.max_instance"]
    found = problems(two_apps(budget={"max_memory": 4096}))
    assert '"4g"), at least 16m, or 0 for no cap' in found["budget.max_memory"]
    assert problems(two_apps(budget={"max_instances": -1}))["budget.max_instances"]


def test_budget_must_fit_the_floors() -> None:
    data = two_apps(budget={"max_instances": 1})
    data["apps"]["shop"]["pool"] = {"min_instances": 1}
    data["apps"]["blog"]["pool"] = {"min_instances": 1}
    assert "min_instances together (2)" in problems(data)["budget.max_instances"]


def test_check_config_names_an_apps_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(
        '[apps.shop]\nhosts = ["shop.test"]\n[apps.shop.backend]\ntype = "process"\n'
        '[apps.blog]\nhosts = ["blog.test"]\n[apps.blog.backend]\napp = "nosuchmodule:app"\n'
    )
    assert main(["check-config", "--no-ports", str(path)]) == 2
    err = capsys.readouterr().err
    assert "apps.shop.backend.app: missing" in err
    path.write_text(
        '[apps.blog]\nhosts = ["blog.test"]\n[apps.blog.backend]\napp = "nosuchmodule:app"\n'
    )
    assert main(["check-config", "--no-ports", str(path)]) == 2
    assert "apps.blog.backend.app" in capsys.readouterr().err


def test_a_relative_cwd_per_app(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    path = tmp_path / "apps.toml"
    path.write_text('[apps.a]\nhosts = ["a.test"]\n[apps.a.backend]\napp = "x:y"\ncwd = "src"\n')
    assert load(path).apps[0].backend.abs_cwd == str(tmp_path / "src")
