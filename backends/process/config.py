"""The `[backend] type = "process"` table: fork mode (warm template process) or exec
mode (any command with a `{port}` placeholder), parsed and validated in one pass.

    mode = "fork"                      # or "exec"
    # fork
    app = "forkproxy.backends.process.demo:create_app"   # the bundled demo;
                                     # yours: "mysite.wsgi:application",
                                       # "app:app" (Flask), "myapp:create_app", "myapp:asgi_app"
    app_kind = "auto"                  # "aiohttp" | "asgi" | "wsgi"; auto tells them apart
                                       # (aiohttp Application; async __call__ -> ASGI;
                                       # (environ, start_response) -> WSGI) and errs if unsure
    threads = 4                        # WSGI only: worker threads per instance (waitress);
                                       # pool.max_concurrency = "auto" (default) follows it
    warmup = "mypkg.warm:run"          # optional, runs once in the template: f() or f(app)
    warmup_requests = ["/", "/admin/login/"]   # GETs sent through the app in the template
                                       # (in process, no server) so every fork inherits
                                       # warm caches; default: [pool.readiness_path]
                                       # (aiohttp apps: none); [] turns it off
    post_fork = "mypkg.forks:reinit"   # optional, runs in every fork before it serves: f() or
                                       # f(app) - reopen what must not be shared (see README)
    pythonpath = ["src"]               # extra sys.path entries, relative to cwd
    prefork = 0                        # spare forks kept ready: ~2x faster cold start, but
                                       # on_startup then runs before FORKPROXY_INSTANCE is set
    template_idle_ttl = "auto"         # give the template back after the app has had no
                                       # instance this long (its next start re-imports the
                                       # app); "auto": 20x the measured template start,
                                       # within 30s..5m; "off": keep it for ever; 0: at once
    zygote = true                      # templates are forked from one shared process that
                                       # has imported the frameworks (see zygote_preload);
                                       # false: each template is a fresh interpreter
    zygote_preload = "auto"            # modules the zygote imports: "auto" = whichever of
                                       # aiohttp, flask, django, fastapi, starlette, waitress,
                                       # uvicorn are installed; or a list, e.g. ["flask"]
    # exec
    command = ["python", "-m", "examples.app", "--port", "{port}"]   # or one string
                                       # "python"/"python3" first = the proxy's interpreter
    # both
    env = { KEY = "value" }
    cwd = "."
    host = "127.0.0.1"
    stop_grace = "5s"                  # SIGTERM, then SIGKILL after this long
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from forkproxy.backends.support.gaps import GapLog
from forkproxy.backends.support.table import Table

MODES = ("fork", "exec")
APP_KINDS = ("auto", "aiohttp", "asgi", "wsgi")
# The bundled demo ships in the package: `forkproxy run` with no config works after pip install.
DEFAULT_APP = "forkproxy.backends.process.demo:create_app"
DEFAULT_COMMAND = ("python", "-m", "forkproxy.backends.process.demo", "--port", "{port}")
# template_idle_ttl = "auto": this many template starts' worth of idle time, clamped, or the
# app's learned idle gaps where they are short enough (support/gaps.py). A template holds a
# whole interpreter with the app imported (~10 MiB PSS beside the zygote); climbing back
# costs one fork of the zygote and the app's own import (~40 ms quiet). The floor is low:
# an app called steadily keeps its template through its learned gaps, and one with no
# pattern (new, or rare) should not hold 10 MiB for half a minute on the chance.
TEMPLATE_TTL_STARTS = 20.0
TEMPLATE_TTL_MIN = 5.0
TEMPLATE_TTL_MAX = 300.0  # well under the 10 minutes after which an idle app holds nothing
ZYGOTE_FRAMEWORKS = ("aiohttp", "flask", "django", "fastapi", "starlette", "waitress", "uvicorn")
DEFAULT_THREADS = 4  # waitress's own default; an instance is cheap, so more forks beat more threads


@dataclass(frozen=True)
class ProcessConfig:
    mode: str = "fork"
    # fork mode
    app: str = DEFAULT_APP
    app_kind: str = "auto"
    warmup: str | None = None
    warmup_requests: tuple[str, ...] | None = None  # None: the pool's readiness path
    post_fork: str | None = None  # "module:function" run in each fork before it serves
    threads: int = DEFAULT_THREADS  # WSGI: requests one instance serves at once
    pythonpath: tuple[str, ...] = ()
    # forks kept ready ahead of demand (loop running, app started, no id yet); 0: fork on start
    prefork: int = 0
    # seconds with no instance before the template is given back; None: "auto" (priced by
    # its measured start, see template_ttl), math.inf: "off"
    template_idle_ttl: float | None = None
    zygote: bool = True
    zygote_preload: tuple[str, ...] | None = None  # None: "auto" (ZYGOTE_FRAMEWORKS installed)
    # exec mode: every "{port}" in an argument is replaced; $PORT is set as well
    command: tuple[str, ...] = DEFAULT_COMMAND
    # both
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    host: str = "127.0.0.1"
    stop_grace: float = 5.0

    def template_ttl(self, start_cost: float, gaps: GapLog | None = None) -> float:
        """How long a template with no instance is kept: the key, or under "auto" priced by
        `start_cost` (seconds its last start took), or longer, through the app's learned
        idle gaps where holding it through them costs few enough starts (support/gaps.py)."""
        if self.template_idle_ttl is not None:
            return self.template_idle_ttl
        priced = min(TEMPLATE_TTL_MAX, max(TEMPLATE_TTL_MIN, TEMPLATE_TTL_STARTS * start_cost))
        learned = gaps.window(start_cost, TEMPLATE_TTL_MAX) if gaps is not None else 0.0
        return max(priced, learned)

    @property
    def uses_zygote(self) -> bool:
        """Interpreter start-up settings (PYTHONPATH, PYTHONHASHSEED...) act only at exec:
        an app that sets any gets a fresh interpreter, as without the zygote."""
        return self.zygote and not any(k.startswith("PYTHON") for k in self.env)

    @property
    def abs_cwd(self) -> str:
        return os.path.abspath(self.cwd)

    def warmup_spec(self, readiness_path: str) -> dict[str, Any]:
        """What the template's warm-up reads: the paths, and whether the user chose them
        (an aiohttp app is warmed only then: its default is to run none of its code)."""
        if self.warmup_requests is None:
            return {"paths": [readiness_path], "configured": False}
        return {"paths": list(self.warmup_requests), "configured": True}


def _is_target(value: str) -> bool:
    module, sep, attr = value.partition(":")
    return bool(sep and module.strip() and attr.strip())


def _template_idle_ttl(table: Table) -> float | None:
    """ "auto" (None), "off" (math.inf: kept for ever) or a duration (0: given back as soon
    as the app has no instance); an error names all three."""
    key = "template_idle_ttl"
    raw = table.data.get(key, "auto")
    if raw in ("auto", "off"):
        table.opt_str(key)  # seen
        return None if raw == "auto" else math.inf
    before = len(table.problems)
    seconds = table.duration(key, 0.0)
    if len(table.problems) > before:
        p = table.problems[-1]
        table.problems[-1] = dataclasses.replace(p, message=f'{p.message} (or "auto", "off")')
        return None
    return seconds


def parse_config(table: Table) -> ProcessConfig:
    table.choice("type", ["process"], "process")  # the proxy dispatches on it; seen here
    mode = table.choice("mode", MODES, "fork")
    app = table.str("app", DEFAULT_APP)
    app_kind = table.choice("app_kind", APP_KINDS, "auto")
    if isinstance(table.data.get("warmup"), list):
        table.opt_str("warmup")  # seen; the message below is the useful one
        table.problems.pop()
        table.error("warmup", 'a hook "module:function"; warm-up paths go in warmup_requests')
        warmup = None
    else:
        warmup = table.opt_str("warmup")
    warmup_requests = (
        tuple(table.str_list("warmup_requests")) if table.has("warmup_requests") else None
    )
    post_fork = table.opt_str("post_fork")
    threads = table.int("threads", DEFAULT_THREADS, min=1, max=256)
    pythonpath = tuple(table.str_list("pythonpath"))
    prefork = table.int("prefork", 0, min=0, max=16)
    template_idle_ttl = _template_idle_ttl(table)
    zygote = table.bool("zygote", True)
    zygote_preload: tuple[str, ...] | None = None
    if table.data.get("zygote_preload", "auto") == "auto":
        table.opt_str("zygote_preload")  # seen
    else:
        zygote_preload = tuple(table.str_list("zygote_preload"))
    command: tuple[str, ...] = DEFAULT_COMMAND
    if table.has("command"):
        raw = table.data["command"]
        if isinstance(raw, str):
            table.str("command")
            try:
                command = tuple(shlex.split(raw))
            except ValueError as exc:
                table.error("command", f"cannot split {raw!r}: {exc}")
        else:
            command = tuple(table.str_list("command"))
    env = table.str_map("env")
    cwd = table.str("cwd", ".")
    host = table.str("host", "127.0.0.1")
    stop_grace = table.duration("stop_grace", 5.0)

    if mode == "fork":
        if not _is_target(app):
            table.error("app", f'{app!r}: expected "module:attribute", e.g. "{DEFAULT_APP}"')
        if warmup is not None and not _is_target(warmup):
            table.error("warmup", f'{warmup!r}: expected "module:function"')
        for target in warmup_requests or ():
            if not target.startswith(("/", "http://")):
                table.error(
                    "warmup_requests",
                    f'{target!r}: expected a path ("/admin/login/") or "http://host/path"',
                )
        if post_fork is not None and not _is_target(post_fork):
            table.error("post_fork", f'{post_fork!r}: expected "module:function"')
    if mode == "exec":
        if not command:
            table.error("command", "must not be empty")
        elif not any("{port}" in a for a in command) and not any("$PORT" in a for a in command):
            # $PORT is set in the environment too, but a command that names neither
            # usually forgot to listen on the port we probe.
            table.error(
                "command",
                "must contain a {port} placeholder (or read $PORT, e.g. "
                '["sh", "-c", "exec myapp --port $PORT"])',
            )
    table.done()
    return ProcessConfig(
        mode=mode,
        app=app,
        app_kind=app_kind,
        warmup=warmup,
        warmup_requests=warmup_requests,
        post_fork=post_fork,
        threads=threads,
        pythonpath=pythonpath,
        prefork=prefork,
        template_idle_ttl=template_idle_ttl,
        zygote=zygote,
        zygote_preload=zygote_preload,
        command=command,
        env=env,
        cwd=cwd,
        host=host,
        stop_grace=stop_grace,
    )
