"""fork.py's old import path for backends/support/memory.py (one implementation, there);
to go once fork.py imports forkproxy.backends.support.memory itself."""

from forkproxy.backends.support.memory import measure as measure
