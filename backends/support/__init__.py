"""What the backends and the proxy share: task ownership, the TOML table reader."""
