"""Command line: `forkproxy run`, `forkproxy check-config`, `forkproxy tune`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from forkproxy.backends.support.table import ConfigError
from forkproxy.proxy import __version__, logs, preflight
from forkproxy.proxy.config import Config, load, parse, with_overrides

log = logging.getLogger("forkproxy")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forkproxy", description=__doc__)
    p.add_argument("--version", action="version", version=f"forkproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    run.add_argument("--listen", help="HOST:PORT for client traffic (overrides server.listen)")
    run.add_argument("--admin", help="HOST:PORT for the admin listener, or 'off'")
    run.add_argument(
        "--reuse-port",
        action="store_true",
        help="SO_REUSEPORT on the listeners (server.reuse_port): the next proxy binds the "
        "same ports while this one drains",
    )
    run.add_argument(
        "--log-level", choices=logs.LEVELS, default=os.environ.get("FORKPROXY_LOG_LEVEL", "info")
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("FORKPROXY_LOG_FORMAT", "text"),
    )
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.add_argument(
        "--no-import",
        action="store_true",
        help="do not build the fork-mode app in a throw-away interpreter",
    )
    check.add_argument(
        "--no-ports",
        action="store_true",
        help="do not check that server.listen / server.admin are free (e.g. the proxy "
        "being replaced still holds them)",
    )
    # listed here, parsed by _tune(): its options live in loadtest, which only tune loads
    sub.add_parser("tune", help="search pool settings under load (see --help)", add_help=False)
    sub.add_parser("top", help="watch a running proxy: forkproxy top [ADMIN_URL]", add_help=False)
    return p


def _tune(argv: Sequence[str]) -> int:
    """`forkproxy tune`: bench tooling (locust runs as a child), imported only here so a
    running proxy never loads it."""
    from forkproxy.loadtest import tune

    p = argparse.ArgumentParser(
        prog="forkproxy tune",
        description=tune.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_arguments(p)
    return tune.main(p.parse_args(argv))


def _load(path: str | None) -> Config:
    return load(path) if path else parse({}, "<defaults>")


def _report(exc: ConfigError, source: str) -> int:
    print(f"forkproxy: {len(exc.problems)} problem(s) in {source}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def _ports_taken(cfg: Config) -> str | None:
    """The first of server.listen / server.admin another process holds, said as run
    would say it once it tried to bind ("server.listen (127.0.0.1:8080): ..."). A
    restart handing over its listeners (SO_REUSEPORT, or systemd socket activation's
    LISTEN_FDS) is not refused here: binding decides then."""
    if os.environ.get("LISTEN_FDS"):
        return None
    server = cfg.server
    for key, address in (("server.listen", server.listen), ("server.admin", server.admin)):
        if address is None:
            continue
        if problem := preflight.port_problem(key, address, reuse_port=True):
            return f"{key} ({address}): {problem.message.rpartition(': ')[2]}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["top"]:
        from forkproxy.proxy import top

        return top.main(args_list[1:])
    if args_list[:1] == ["tune"]:
        return _tune(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.command == "check-config":
        try:
            cfg = load(args.file)
            problems = preflight.check(cfg, imports=not args.no_import, ports=not args.no_ports)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            return _report(exc, args.file)
        print(f"{args.file}: ok (backend {cfg.backend_type}, listen {cfg.server.listen})")
        return 0
    logs.setup(args.log_level, args.log_format)

    def read() -> Config:
        """The config as started and as SIGHUP re-reads it: the file, then the flags."""
        cfg = with_overrides(_load(args.config), listen=args.listen, admin=args.admin)
        if args.reuse_port:
            cfg = replace(cfg, server=replace(cfg.server, reuse_port=True))
        return cfg

    try:
        cfg = read()
    except ConfigError as exc:
        return _report(exc, args.config or "<defaults>")
    if taken := _ports_taken(cfg):
        # before the backend builds the app: a slow import must not delay this answer
        log.error("cannot listen: %s", taken)
        log.info("forkproxy stopped")
        return 3
    from forkproxy.proxy.server import StartupFailed, serve

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    code = 0
    try:
        with runner:
            runner.run(serve(cfg, read))
    except StartupFailed:  # serve() logged why
        code = 3
    except ConfigError as exc:  # e.g. the admin token's env var or file is missing
        code = _report(exc, args.config or "<defaults>")
    log.info("forkproxy stopped")  # after the reason it stopped, never before
    return code
