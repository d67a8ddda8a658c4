#!/usr/bin/env bash
# Install PoolAI with its test tools into ./.venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch: the CPU build pinned here is what job workers run; installing it first keeps pip
# from resolving a multi-gigabyte CUDA build for a plain "torch" requirement.
.venv/bin/python -m pip install --quiet "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install --quiet -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
exec .venv/bin/python -m pytest "$@"
