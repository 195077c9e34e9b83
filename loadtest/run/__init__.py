"""Start, probe and stop what a benchmark runs: subprocesses, a forkproxy from a generated config,
nginx, external tools, and the admin /instances sampler."""
