#!/usr/bin/env bash
# Make the system tools the test suite runs available:
#   prometheus + promtool (Debian package `prometheus`): rule checks and unit tests
#     (tests/integration/test_ops_assets.py) and a real Prometheus server judging the shipped
#     alerts against a running daemon (tests/integration/test_prometheus.py);
#   podman (package `podman`): `podman-compose config` parses deploy/compose.yaml the way
#     compose does (podman-compose refuses to start without a podman binary).
# Idempotent: installs only what is missing, with apt-get, when running as root.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v podman >/dev/null 2>&1 || missing+=(podman)
[ ${#missing[@]} -eq 0 ] && exit 0

fail() {
  echo "ensure-test-tools: $1" >&2
  echo "ensure-test-tools: install them yourself (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and apt-get is not available"
[ "$(id -u)" -eq 0 ] || fail "missing ${missing[*]}; installing needs root (uid $(id -u))"

echo "ensure-test-tools: installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || fail "apt-get update failed"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || fail "apt-get install ${missing[*]} failed"
# The prometheus package starts a service where an init system runs; the tests start their own.
for tool in promtool prometheus podman; do
  command -v "$tool" >/dev/null 2>&1 || fail "packages installed but $tool is still not on PATH"
done
echo "ensure-test-tools: ready ($(promtool --version 2>&1 | head -n1); $(podman --version))" >&2
