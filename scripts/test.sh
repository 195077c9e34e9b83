#!/usr/bin/env bash
# Set up, then run the whole suite: ruff (lint + format), mypy strict, pytest.
# Docker and vSphere tests skip with a reason when no engine / simulator is there,
# unless FORKPROXY_REQUIRE_DOCKER=1 / FORKPROXY_REQUIRE_VSPHERE=1 (CI sets both).
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check proxy backends tests loadtest examples forkproxy/*.py
.venv/bin/ruff format --check proxy backends tests loadtest examples forkproxy/*.py
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/pytest "$@"
