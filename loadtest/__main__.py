"""`python -m loadtest COMMAND`: the benchmarks (bench, slowhttp, a backend's cold start), tune.

Each command module gives add_arguments(parser) and main(args) -> exit status; heavy or optional
imports (locust, docker, pyVmomi) wait until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from loadtest import bench, slowhttp, tune
from loadtest.coldstart import docker, process, vsphere

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "bench": (bench, "every benchmark in one go; results, plots and docs/BENCHMARKS.md"),
    "tune": (tune, "search [pool] settings under load (the same as `forkproxy tune`)"),
    "slowhttp": (slowhttp, "slowhttptest attacks against the proxy's deadlines"),
}
COLDSTART: dict[str, tuple[ModuleType, str]] = {
    "process": (process, "process backend, fork vs exec: start() to first byte"),
    "docker": (docker, "docker backend: paused pool (unpause) vs create+start, and a burst"),
    "vsphere": (vsphere, "vsphere backend on the vcsim simulator: SOAP calls and time split"),
}


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    module: ModuleType,
    help_text: str,
) -> argparse.ArgumentParser:
    """One subcommand whose options and entry point come from `module`."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(p)
    p.set_defaults(main=module.main)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        add_command(sub, name, module, help_text)
    cold = sub.add_parser("coldstart", help="one backend's cold-start benchmark")
    backends = cold.add_subparsers(dest="backend", required=True, metavar="BACKEND")
    for name, (module, help_text) in COLDSTART.items():
        add_command(backends, name, module, help_text)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    run: Callable[[argparse.Namespace], int] = args.main
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
