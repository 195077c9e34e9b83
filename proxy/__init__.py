"""forkproxy: a per-request scale-out reverse proxy."""

__version__ = "0.1.0"
