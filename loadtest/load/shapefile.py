"""The load shape alone (FORKPROXY_SHAPE), for `locust -f yours.py,shapefile.py`: tune
drives a user's own locustfile (or the paths file) with it. A shape the user's file
defines comes first on the command line and wins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    from forkproxy.loadtest.load import shapes
except ImportError:  # run from a checkout without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from forkproxy.loadtest.load import shapes

Shape = shapes.select(os.environ.get("FORKPROXY_SHAPE"))
if Shape is None:
    del Shape
