"""Example apps served behind forkproxy (used by tests, benchmarks and the docs)."""
