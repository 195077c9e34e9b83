"""Generate the many-apps bench's apps (small aiohttp, Flask and Django apps, one folder
each, written into the bench's temp work dir) and the forkproxy config of each variant.

Variants:
- always-on: each app is a real `gunicorn -w 1` (what a user runs per app today), started
  once and never stopped: forkproxy's process backend in exec mode runs the command with
  min_instances = max_instances = 1, so forkproxy only routes by Host to it.
- keepalive-90s: fork mode, instances kept 90 s after their last request (Knative's
  default scale-to-zero grace), and the app's template too where the config has a key
  for it (TEMPLATE_KEEPALIVE).
- defaults: fork mode with forkproxy's defaults (an empty [pool]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forkproxy.loadtest.load.manyapps_trace import AppSpec
from forkproxy.loadtest.run.procs import PYTHON

VARIANTS = ("always-on", "keepalive-90s", "defaults")
KEEPALIVE = "90s"
# Where a template's own keep-alive would go, first the config accepts wins (the zygote
# work adds one; until then only the instances get 90 s). The lead can switch it here.
TEMPLATE_KEEPALIVE: tuple[tuple[str, str], ...] = (
    ("backend", "template_idle_ttl"),
    ("pool", "template_idle_ttl"),
)

_AIOHTTP = """\
from aiohttp import web

NAME = "{name}"


async def index(request: web.Request) -> web.Response:
    return web.json_response({{"app": NAME, "kind": "aiohttp", "path": request.path}})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{{tail:.*}}", index)
    return app


async def make_app() -> web.Application:  # gunicorn's aiohttp worker awaits a factory
    return create_app()
"""

_FLASK = """\
from flask import Flask, jsonify, request

NAME = "{name}"
app = Flask(__name__)


@app.route("/", defaults={{"path": ""}})
@app.route("/<path:path>")
def index(path: str):
    return jsonify(app=NAME, kind="flask", path=request.path)
"""

_DJANGO = """\
from django.conf import settings

NAME = "{name}"
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-" + NAME,
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402 - after configure()
from django.http import JsonResponse  # noqa: E402
from django.urls import re_path  # noqa: E402


def index(request):
    return JsonResponse({{"app": NAME, "kind": "django", "path": request.path}})


urlpatterns = [re_path(r"^.*$", index)]
application = get_wsgi_application()
"""

_SOURCES = {"aiohttp": _AIOHTTP, "flask": _FLASK, "django": _DJANGO}
# module attribute: fork mode (a plain factory or the WSGI callable), gunicorn
_TARGETS = {
    "aiohttp": ("create_app", "make_app"),
    "flask": ("app", "app"),
    "django": ("application", "application"),
}


def module_name(app: AppSpec) -> str:
    return f"{app.name}_main"  # unique: no two apps' modules can shadow each other


def write_apps(root: Path, apps: Sequence[AppSpec]) -> dict[str, Path]:
    """One folder per app under root, holding its module. Returns each app's folder."""
    out = {}
    for a in apps:
        d = root / a.name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{module_name(a)}.py").write_text(_SOURCES[a.kind].format(name=a.name))
        out[a.name] = d
    return out


def gunicorn_command(app: AppSpec, folder: Path) -> list[str]:
    target = f"{module_name(app)}:{_TARGETS[app.kind][1]}"
    argv = [PYTHON, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:{port}", "--chdir"]
    argv += [str(folder), "--log-level", "warning"]
    if app.kind == "aiohttp":
        argv += ["-k", "aiohttp.GunicornWebWorker"]
    return [*argv, target]


def backend(variant: str, app: AppSpec, folder: Path) -> dict[str, Any]:
    if variant == "always-on":
        return {"type": "process", "mode": "exec", "command": gunicorn_command(app, folder)}
    return {
        "type": "process",
        "mode": "fork",
        "app": f"{module_name(app)}:{_TARGETS[app.kind][0]}",
        "pythonpath": [str(folder)],
    }


def pool(variant: str) -> dict[str, Any]:
    if variant == "always-on":
        # Up for the whole run as a gunicorn would be; a slow box may need long starts
        # (100 interpreters import their framework side by side).
        return {"min_instances": 1, "max_instances": 1, "start_timeout": "300s"}
    if variant == "keepalive-90s":
        return {"idle_ttl": KEEPALIVE}
    if variant == "defaults":
        return {}
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")


def config(
    variant: str,
    apps: Sequence[AppSpec],
    folders: Mapping[str, Path],
    name: str,
    template_key: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The whole [apps] config of one variant. `template_key` (table, key): where the
    template keep-alive goes, for the keep-alive variant (see accepted_template_key)."""
    # The access log says of each request whether it waited on a start ("cold"): how the
    # bench tells a first request served by a kept instance from one that started one.
    doc: dict[str, Any] = {"server": {"name": name, "access_log": True}, "apps": {}}
    for a in apps:
        entry: dict[str, Any] = {
            "hosts": [a.host],
            "pool": pool(variant),
            "backend": backend(variant, a, folders[a.name]),
        }
        if variant == "keepalive-90s" and template_key is not None:
            table, key = template_key
            entry[table] = {**entry[table], key: KEEPALIVE}
        doc["apps"][a.name] = entry
    return doc


def accepted_template_key(
    candidates: Sequence[tuple[str, str]] = TEMPLATE_KEEPALIVE,
) -> tuple[str, str] | None:
    """The first (table, key) forkproxy's config parser takes for a fork-mode app: a key
    this checkout does not have would be an "unknown key" error, so it is left out."""
    from forkproxy.backends.support.table import ConfigError
    from forkproxy.proxy import config as proxy_config

    for table, key in candidates:
        doc: dict[str, Any] = {
            "pool": {},
            "backend": {"type": "process", "mode": "fork", "app": "m:app"},
        }
        doc[table][key] = KEEPALIVE
        try:
            proxy_config.parse(doc)
        except ConfigError:
            continue
        return table, key
    return None
