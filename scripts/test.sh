#!/usr/bin/env bash
# Install PoolAI with its test tools into ./.venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# The status page's browser test drives Debian's chromium through Playwright (pip, dev extra).
# Install the browser when it is missing and we may (root with apt); otherwise that test skips.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "warning: could not install chromium; the browser test will be skipped" >&2
    else
        echo "note: chromium is not installed (as root: apt-get install chromium); the browser test will be skipped" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# pip's output minus the noise of this machine's local package index; pip's failure is ours.
pip_install() {
    local out
    out=$(.venv/bin/python -m pip install --quiet "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | grep -v '^WARNING: Location' || true
}
pip_install --upgrade pip
# torch: the CPU build pinned here is what job workers run; installing it first keeps pip
# from resolving a multi-gigabyte CUDA build for a plain "torch" requirement.
pip_install "torch==2.13.0"
pip_install -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
