"""`python -m loadtest bench ...` (benchmarks with plots) and `python -m loadtest tune ...`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m loadtest {bench,tune} [options]  (--help after the command for more)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "bench":
        from loadtest import bench

        return bench.main(rest)
    if cmd == "tune":
        from loadtest import tune

        return tune.main(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
