#!/usr/bin/env bash
# Install PoolAI with its test tools into ./.venv and run the whole test suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages some tests need, installed when missing and we may (root with apt).
APT_UPDATED=
apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    if [ -z "$APT_UPDATED" ]; then apt-get update -qq || return 1; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The status page's browser test drives Debian's chromium through Playwright (pip, dev extra);
# without it that test skips.
if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium \
        || echo "note: chromium is not installed (as root: apt-get install chromium); the browser test will be skipped" >&2
fi

# Job workers run under bubblewrap with a seccomp filter built by libseccomp (node/jobs/sandbox.py).
# Without bwrap a node refuses peers' jobs, and tests/test_sandbox.py skips (fails under CI=true).
if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2' >/dev/null; then
    apt_install bubblewrap libseccomp2 \
        || echo "warning: bubblewrap is not installed (as root: apt-get install bubblewrap); job workers cannot be sandboxed" >&2
fi

# The reachability test puts a node behind a firewall, and the NAT lab (scripts/nat_lab.py,
# tests/test_nat_lab_live.py) builds home routers, in network namespaces: ip and ss (iproute2),
# iptables (Debian's default nf_tables backend); as root. Without them, or not as root, those tests skip.
if [ "$(id -u)" = 0 ] && { ! command -v iptables >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 \
        || ! command -v ss >/dev/null 2>&1; }; then
    apt_install iptables iproute2 \
        || echo "note: iptables or iproute2 is not installed (as root: apt-get install iptables iproute2); the firewalled-node and NAT lab tests will be skipped" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# pip's own warnings, minus the noise of this machine's local package index and what the build
# backend says (indented; setuptools' notes on an editable install); all of it when pip fails.
pip_install() {
    local out
    out=$(.venv/bin/python -m pip install --quiet "$@" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | grep -v -e '^WARNING: Location' -e '^  ' || true
}
pip_install --upgrade pip
# torch: the CPU build pinned here is what job workers run; installing it first keeps pip
# from resolving a multi-gigabyte CUDA build for a plain "torch" requirement.
pip_install "torch==2.13.0"
pip_install -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
