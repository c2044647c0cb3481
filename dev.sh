#!/usr/bin/env bash
# ctd developer entry point; needs only python3.11 (or $PYTHON) and bash.
#   ./dev.sh demo    create .venv if needed, run the daemon on the bundled broker + demo feed
#   ./dev.sh run     create .venv if needed, run the daemon (`ctd run`)
#   ./dev.sh test    create .venv if needed, lint, type-check, check import contracts, run every test
#   ./dev.sh bench   create .venv if needed, run the benchmarks under bench/
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
BIN="$VENV/bin"

venv() {
  # Re-install only when the dependency declaration changed since the last install.
  local stamp="$VENV/.installed" want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  echo "dev.sh: setting up $VENV (first time takes a minute or two)" >&2
  [ -x "$BIN/python" ] || "$PYTHON" -m venv "$VENV"
  "$BIN/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$BIN/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
}

lint() {
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  "$BIN/mypy"
  "$BIN/lint-imports"
}

suite() {
  # The unit tests (CPU-bound) run beside the integration and reliability tests (mostly
  # waiting on daemons, the broker and timeouts), each in its own pytest session and temp
  # directory: on 2 cores the whole suite takes the time of the longer half, not the sum.
  local tmp unit_rc=0 rest_rc=0 unit_pid
  tmp="$(mktemp -d)"
  "$BIN/python" -m pytest -p no:cacheprovider --basetemp="$tmp/unit" tests/unit \
    > "$tmp/unit.log" 2>&1 &
  unit_pid=$!
  "$BIN/python" -m pytest --basetemp="$tmp/rest" tests/integration tests/reliability \
    || rest_rc=$?
  wait "$unit_pid" || unit_rc=$?
  echo "== tests/unit"
  cat "$tmp/unit.log"
  rm -rf "$tmp"
  [ "$unit_rc" -eq 0 ] && [ "$rest_rc" -eq 0 ]
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) venv; exec "$BIN/ctd" demo "$@" ;;
  run) venv; exec "$BIN/ctd" run "$@" ;;
  test) venv; lint; bash scripts/ensure-test-tools.sh
    if [ $# -gt 0 ]; then exec "$BIN/python" -m pytest "$@"; fi
    suite ;;
  lint) venv; lint ;;
  bench) venv; for b in bench/[a-z]*.py; do m=$(basename "$b" .py); echo "== bench.$m"; "$BIN/python" -m "bench.$m"; done ;;
  *) echo "usage: ./dev.sh {demo|run|test|lint|bench} [args]" >&2; exit 2 ;;
esac
