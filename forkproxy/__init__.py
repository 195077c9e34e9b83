"""forkproxy: a per-request scale-out reverse proxy.

Everything installs and imports under this one name (forkproxy.proxy, forkproxy.backends,
forkproxy.loadtest), so an app's own top-level `proxy`, `backends` or `loadtest` package can
never shadow ours. In a checkout the three subpackages are symlinks to the repository's
top-level folders; a wheel holds real copies (docs/ARCHITECTURE.md, "One import namespace").
"""

__version__ = "0.1.0"
