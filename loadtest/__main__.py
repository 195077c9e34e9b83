"""`python -m loadtest COMMAND`: the benchmarks (bench, slowhttp, a backend's cold start), tune.

Each command module gives add_arguments(parser) and main(args) -> exit status; a backend's cold
start follows forkproxy.loadtest.coldstart.contract instead. Heavy or optional imports (locust,
docker,
pyVmomi) wait until a command runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from forkproxy.loadtest import bench, slowhttp, tune
from forkproxy.loadtest.coldstart import contract

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "bench": (bench, "every benchmark in one go; results, plots and docs/BENCHMARKS.md"),
    "tune": (tune, "search [pool] settings under load (the same as `forkproxy tune`)"),
    "slowhttp": (slowhttp, "slowhttptest attacks against the proxy's deadlines"),
}


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    main: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """One subcommand: its options and its entry point."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(main=main)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        add_command(sub, name, help_text, module.__doc__, module.add_arguments, module.main)
    cold = sub.add_parser("coldstart", help="one backend's cold-start benchmark")
    backends = cold.add_subparsers(dest="backend", required=True, metavar="BACKEND")
    for name in contract.BACKENDS:
        b = contract.load(name)
        add = functools.partial(contract.add_arguments, b)
        main = functools.partial(contract.main, b)
        add_command(backends, name, b.command.help, b.description, add, main)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    run: Callable[[argparse.Namespace], int] = args.main
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
