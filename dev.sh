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

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) venv; exec "$BIN/ctd" demo "$@" ;;
  run) venv; exec "$BIN/ctd" run "$@" ;;
  test) venv; lint; bash scripts/ensure-test-tools.sh; exec "$BIN/python" -m pytest "$@" ;;
  lint) venv; lint ;;
  bench) venv; for b in bench/[a-z]*.py; do m=$(basename "$b" .py); echo "== bench.$m"; "$BIN/python" -m "bench.$m"; done ;;
  *) echo "usage: ./dev.sh {demo|run|test|lint|bench} [args]" >&2; exit 2 ;;
esac
