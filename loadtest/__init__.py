"""Load tests and benchmarks for forkproxy: locust shapes, `python -m loadtest bench`, and tune.

Nothing here is imported by the proxy at runtime; locust is only ever run as a subprocess.
"""
