#!/usr/bin/env bash
# Make `promtool` available for the test suite (tests/test_ops_assets.py).
# Idempotent: does nothing when promtool is already on PATH. Otherwise installs
# Debian's `prometheus` package (which ships promtool) when running as root with apt-get.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi

fail() {
  echo "ensure-promtool: $1" >&2
  echo "ensure-promtool: install promtool yourself (Debian/Ubuntu: apt-get install prometheus)" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "promtool is not on PATH and apt-get is not available"
[ "$(id -u)" -eq 0 ] || fail "promtool is not on PATH and installing it needs root (uid $(id -u))"

echo "ensure-promtool: promtool not found; installing Debian package 'prometheus' (~330 MB)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || fail "apt-get update failed"
apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
  || fail "apt-get install prometheus failed"
# The package starts a prometheus service where an init system runs; tests need only promtool.
command -v promtool >/dev/null 2>&1 || fail "package 'prometheus' installed but promtool is still not on PATH"
echo "ensure-promtool: installed $(promtool --version 2>&1 | head -n1)" >&2
