"""The example app is the bundled demo (backends/process/demo.py), shipped inside the
package so `forkproxy run` works after a plain `pip install`; this path stays for the
examples' configs and `python -m examples.app --port N`."""

from __future__ import annotations

from forkproxy.backends.process.demo import create_app, main

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    main()
