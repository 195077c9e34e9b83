"""What a run leaves behind: Markdown report (and docs/BENCHMARKS.md), plots, tables, result
arithmetic, and live progress while it runs."""
