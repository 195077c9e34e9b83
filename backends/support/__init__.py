"""What the backends and the proxy share: task ownership, the TOML table reader, a
process's memory read from /proc, the open-files limit the processes started get."""
