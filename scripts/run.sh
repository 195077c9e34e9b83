#!/usr/bin/env bash
# Set up, then run forkproxy on the process backend in front of the bundled example app.
#   bash scripts/run.sh [forkproxy run flags...]   e.g. --config examples/exec.toml
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [[ " $* " != *" --config "* && " $* " != *" -c "* ]]; then
    set -- --config examples/fork.toml "$@"
fi
exec .venv/bin/forkproxy run "$@"
