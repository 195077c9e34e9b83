"""`python -m forkproxy ...`: the same as the `forkproxy` command."""

from forkproxy.proxy.cli import main

raise SystemExit(main())
