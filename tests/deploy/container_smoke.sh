#!/usr/bin/env bash
# tests/deploy/container_smoke.sh -- builds the real Dockerfile with a local Docker engine and
# runs the image three ways (owned by the deployment artefacts; run by `make test-container`):
#   1. `circus-warden --version` and `circusd --version`;
#   2. standalone embedded mode: the image's default CMD (`circus-warden serve` with the
#      image's config and policy; circusd started by the warden), as the chart's warden
#      security context would run it (read-only root, tmpfs /tmp, no capabilities, uid 10001)
#      on a loopback port with --network host; /readyz must answer 200 and report isolation
#      `none` (circusd runs as 10001 there), with a warning in the warden's log;
#   3. the chart's pod layout, with tests/deploy/values-smoke.yaml: two containers of the
#      image, circusd (`sh -c 'chmod 2770 ... && exec circusd /etc/circus/circus.ini'`) and
#      `circus-warden serve --config ...`, with the files rendered by the chart (ConfigMap
#      modes and group kept) and each container's security context as Docker flags (circusd:
#      --user 0:10001 --group-add 10001 --cap-drop ALL --cap-add SETUID/SETGID/KILL
#      --security-opt no-new-privileges --read-only; the warden: 10001, no capabilities),
#      sharing only a /run/circus and a /var/log/circus-warden directory, made like the
#      chart's emptyDirs with fsGroup (2777 root:10001) and set to 2770 by circusd's start
#      step; /readyz must answer 200 and report isolation `uid`, the circusd liveness probe
#      command must pass, the token must be needed; then the hostile process
#      (tests/isolation/hostile.py, mounted read-only at /opt/isolation) is added through
#      the warden and every way around it must be blocked (tests/deploy/hostile_smoke.py).
#
# No image can be pulled here, so the two base images the Dockerfile names are stand-ins built
# locally with mmdebstrap and `docker import`ed under the exact tags:
#   debian:bookworm-slim  Debian bookworm minbase (what the official slim image is made of);
#   rust:1-bookworm       bookworm minbase + gcc/g++/libc6-dev/make + this machine's Rust
#                         toolchain (rustc --print sysroot) in /usr/local/cargo, like the
#                         official image's layout.
# So the Dockerfile itself is unchanged and every stage runs for real (cargo build --locked
# fetches crates from crates.io, pip installs circus from PyPI, apt installs from Debian;
# the build uses --network host because dockerd runs with --bridge=none). Both stand-ins also
# carry this machine's extra CA certificates (/usr/local/share/ca-certificates, needed behind
# its TLS-inspecting egress) and its apt options (a snapshot mirror with expired Release
# dates): environment, not image content, documented here so nobody mistakes them for it.
#
# Starts dockerd (--iptables=false --bridge=none) only if none answers, and stops what it
# started. Every wait is bounded. Prints the duration of each step.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
IMAGE=${IMAGE:-circus-warden:smoke}
VPY=${VPY:-$ROOT/.venv/bin/python}
HELM=${HELM:-$ROOT/.tools/deploy-venv/bin/helm}
WORK=$(mktemp -d /tmp/cw-container.XXXXXX)
STARTED_DOCKERD=
CONTAINERS=()
T0=$(date +%s)

step() { printf '\n== %s (t+%ss)\n' "$*" "$(( $(date +%s) - T0 ))"; }
timed() { local s; s=$(date +%s); "$@"; printf -- '-- %ss: %s\n' "$(( $(date +%s) - s ))" "$*"; }

cleanup() {
    local rc=$?
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    if [[ -n $STARTED_DOCKERD ]]; then
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$WORK"
    printf '\n== container smoke: %s after %ss\n' "$([[ $rc == 0 ]] && echo PASSED || echo FAILED)" "$(( $(date +%s) - T0 ))"
    exit "$rc"
}
trap cleanup EXIT

# check_isolation PORT LEVEL: /readyz names the level, the gauge is 1 for it and not for the other.
check_isolation() {
    local port=$1 level=$2 other body metrics
    other=$([[ $level == uid ]] && echo none || echo uid)
    body=$(curl -s --max-time 5 "http://127.0.0.1:$port/readyz")
    [[ $body == *"isolation: $level"* ]] || { echo "/readyz does not say isolation: $level: $body" >&2; return 1; }
    metrics=$(curl -s --max-time 5 "http://127.0.0.1:$port/metrics")
    grep -qE "^circus_warden_isolation_level\{level=\"$level\"\} 1\b" <<<"$metrics" \
        || { echo "circus_warden_isolation_level{level=\"$level\"} is not 1:" >&2; grep isolation <<<"$metrics" >&2; return 1; }
    if grep -qE "^circus_warden_isolation_level\{level=\"$other\"\} 1\b" <<<"$metrics"; then
        echo "circus_warden_isolation_level{level=\"$other\"} is 1 too" >&2; return 1
    fi
    echo "isolation $level: /readyz body ${body//$'\n'/ | }; circus_warden_isolation_level{level=\"$level\"} 1"
}

free_port() { "$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_ready URL SECONDS: polls until HTTP 200, bounded.
wait_ready() {
    local url=$1 limit=$2 code=000
    for _ in $(seq 1 $(( limit * 4 ))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [[ $code == 200 ]] && { echo "$url -> 200"; return 0; }
        sleep 0.25
    done
    echo "$url never answered 200 within ${limit}s (last: $code)" >&2
    return 1
}

step "tools: docker.io, mmdebstrap"
if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null || ! test -x /usr/bin/docker; then
    timed apt-get install -y -q --no-install-recommends docker.io mmdebstrap
fi
# The docker.io client matches its daemon's API version; use it, not whatever is first on PATH.
docker() { /usr/bin/docker "$@"; }

step "dockerd"
if ! docker info >/dev/null 2>&1; then
    dockerd --iptables=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
    echo "started dockerd (pid $STARTED_DOCKERD)"
else
    echo "dockerd already running"
fi

# Options every stand-in gets: the machine's apt settings and CA certificates (see the header).
MIRRORS=("deb http://deb.debian.org/debian bookworm main"
         "deb http://deb.debian.org/debian bookworm-updates main"
         "deb http://deb.debian.org/debian-security bookworm-security main")
ENV_HOOK='mkdir -p "$1/usr/local/share/ca-certificates" && { cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true; }'
APT_OPTS=(--aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Check-Date "false"')

step "base image debian:bookworm-slim (mmdebstrap stand-in)"
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    timed mmdebstrap --quiet --variant=minbase "${APT_OPTS[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --customize-hook="$ENV_HOOK" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$WORK/slim.tar" "${MIRRORS[@]}"
    timed docker import --change 'CMD ["bash"]' "$WORK/slim.tar" debian:bookworm-slim
    rm -f "$WORK/slim.tar"
else
    echo "present"
fi

step "base image rust:1-bookworm (mmdebstrap + this machine's toolchain)"
if ! docker image inspect rust:1-bookworm >/dev/null 2>&1; then
    SYSROOT=$(rustc --print sysroot)
    echo "toolchain: $(rustc --version) from $SYSROOT"
    timed mmdebstrap --quiet --variant=minbase "${APT_OPTS[@]}" \
        --include=ca-certificates,gcc,g++,libc6-dev,make,pkg-config \
        --customize-hook="$ENV_HOOK" \
        --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
        --customize-hook="mkdir -p \"\$1/usr/local/cargo\" && cp -a '$SYSROOT/bin' '$SYSROOT/lib' \"\$1/usr/local/cargo/\"" \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
        bookworm "$WORK/rust.tar" "${MIRRORS[@]}"
    timed docker import \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' "$WORK/rust.tar" rust:1-bookworm
    rm -f "$WORK/rust.tar"
else
    echo "present"
fi

step "docker build $IMAGE (the real Dockerfile, every stage)"
if [[ -n ${SMOKE_REUSE_IMAGE:-} ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "SMOKE_REUSE_IMAGE set: testing the existing $IMAGE (for iterating on this script)"
else
    BUILD_START=$(date +%s)
    timed docker build --network host --pull=false \
        --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        -t "$IMAGE" . 2>&1 | tail -n 40
    echo "build took $(( $(date +%s) - BUILD_START ))s"
fi
echo "image size: $(docker image inspect -f '{{.Size}}' "$IMAGE") bytes"
docker image inspect -f 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}}' "$IMAGE"
docker image inspect -f '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$IMAGE" | grep '^org.opencontainers.image.title='

# The security settings the chart uses, as Docker flags.
HARDEN=(--read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m,uid=10001,gid=10001,mode=1777
        --cap-drop ALL --security-opt no-new-privileges --user 10001:10001)

step "1. versions"
out=$(docker run --rm "$IMAGE" circus-warden --version)
echo "$out"; [[ $out == circus-warden\ * ]]
out=$(docker run --rm "${HARDEN[@]}" "$IMAGE" circusd --version)
echo "circusd $out"; [[ $out == 0.19.0* ]]
test "$(docker run --rm "$IMAGE" id -u)" = 10001

step "2. standalone: the default CMD, embedded circusd, on 127.0.0.1 (--network host)"
PORT=$(free_port)
C=cw-smoke-embedded-$$
CONTAINERS+=("$C")
# The image's own config and policy; only the port moves (0.0.0.0:8731 on the host network
# could collide with anything else on this machine).
docker run -d --name "$C" --network host "${HARDEN[@]}" -e "CIRCUS_WARDEN_SERVER__BIND=127.0.0.1:$PORT" \
    "$IMAGE" >/dev/null
START=$(date +%s%N)
if ! wait_ready "http://127.0.0.1:$PORT/readyz" 60; then docker logs "$C" >&2; exit 1; fi
echo "ready after $(( ($(date +%s%N) - START) / 1000000 )) ms"
curl -fsS --max-time 2 "http://127.0.0.1:$PORT/healthz"; echo
# circusd runs as the warden's uid here: no uid isolation, and the warden says so.
check_isolation "$PORT" none
docker logs "$C" 2>&1 | grep -i 'isolation' | grep -qiE 'warn' \
    || { echo "the warden did not warn about isolation none:" >&2; docker logs "$C" >&2; exit 1; }
echo "warden log: $(docker logs "$C" 2>&1 | grep -i 'isolation' | head -n 1 | cut -c1-300)"
docker top "$C" -eo pid,user,args
docker stop -t 20 "$C" >/dev/null
echo "exit code after docker stop: $(docker inspect -f '{{.State.ExitCode}}' "$C")"

step "3. the chart's pod layout (values-smoke.yaml): circusd (uid 0, SETUID/SETGID/KILL) + warden (10001), the hostile process"
mkdir -p "$WORK/pod"
"$VPY" tests/deploy/pod_boot.py --extract-only "$WORK/pod" --helm "$HELM" -f tests/deploy/values-smoke.yaml
FSGROUP=$(cat "$WORK/pod/fsgroup")
mapfile -t CIRCUSD_SEC < "$WORK/pod/circusd.security"
mapfile -t WARDEN_SEC < "$WORK/pod/warden.security"
echo "circusd: ${CIRCUSD_SEC[*]}"
echo "warden:  ${WARDEN_SEC[*]}"
# The shared directories as the kubelet makes the emptyDirs: 0777, plus fsGroup's group and
# the setgid bit. circusd's start step must close them to 2770 itself.
RUN_DIR=$WORK/pod/run-circus
LOG_DIR=$WORK/pod/process-logs
for d in "$RUN_DIR" "$LOG_DIR"; do mkdir -p "$d" && chown "0:$FSGROUP" "$d" && chmod 2777 "$d"; done
chmod 0755 "$WORK" "$WORK/pod"
ls -ln "$WORK/pod/etc-circus" "$WORK/pod/etc-circus-warden"
PORT=$(free_port)
CD=cw-smoke-circusd-$$; CW=cw-smoke-warden-$$
CONTAINERS+=("$CD" "$CW")
mapfile -t CIRCUSD_ARGS < "$WORK/pod/circusd.args"
mapfile -t WARDEN_ARGS < "$WORK/pod/warden.args"
CIRCUSD_WD=$(cat "$WORK/pod/circusd.workdir")
docker run -d --name "$CD" --network none --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m,mode=1777 \
    "${CIRCUSD_SEC[@]}" ${CIRCUSD_WD:+-w "$CIRCUSD_WD"} \
    -v "$RUN_DIR:/run/circus" -v "$LOG_DIR:/var/log/circus-warden" -v "$WORK/pod/etc-circus:/etc/circus:ro" \
    -v "$ROOT/tests/isolation:/opt/isolation:ro" \
    "$IMAGE" "${CIRCUSD_ARGS[@]}" >/dev/null
for _ in $(seq 1 80); do [[ -S $RUN_DIR/control.sock ]] && break; sleep 0.25; done
[[ -S $RUN_DIR/control.sock ]] || { echo "circusd made no control socket within 20 s" >&2; docker logs "$CD" >&2; exit 1; }
# Same files and args as the pod; only the bind moves to a free loopback port (host network).
docker run -d --name "$CW" --network host --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m,uid=10001,gid=10001,mode=1777 \
    "${WARDEN_SEC[@]}" \
    -v "$RUN_DIR:/run/circus" -v "$LOG_DIR:/var/log/circus-warden" -v "$WORK/pod/etc-circus-warden:/etc/circus-warden:ro" \
    --env-file "$WORK/pod/warden.env" -e "CIRCUS_WARDEN_SERVER__BIND=127.0.0.1:$PORT" \
    "$IMAGE" "${WARDEN_ARGS[@]}" >/dev/null
if ! wait_ready "http://127.0.0.1:$PORT/readyz" 60; then docker logs "$CD" >&2; docker logs "$CW" >&2; exit 1; fi
ls -lnd "$RUN_DIR" "$LOG_DIR"; ls -ln "$RUN_DIR"
for d in "$RUN_DIR" "$LOG_DIR"; do
    got=$(stat -c '%a %u %g' "$d")
    [[ $got == "2770 0 $FSGROUP" ]] || { echo "$d is $got, want 2770 0 $FSGROUP" >&2; exit 1; }
done
for s in "$RUN_DIR/control.sock" "$RUN_DIR/pubsub.sock"; do
    got=$(stat -c '%a %g' "$s")
    [[ $got == "770 $FSGROUP" ]] || { echo "$s is $got, want 770 $FSGROUP" >&2; exit 1; }
done
echo "shared dirs 2770 root:$FSGROUP, sockets 0770 group $FSGROUP"
docker top "$CD" -eo pid,uid,gid,args
check_isolation "$PORT" uid
echo "warden log: $(docker logs "$CW" 2>&1 | grep -i 'isolation' | head -n 1 | cut -c1-300)"
mapfile -t PROBE < "$WORK/pod/circusd.liveness"
docker exec "$CD" "${PROBE[@]}" >/dev/null && echo "circusd liveness probe command: ok"
# The tokens arrived through the env file exactly as the kubelet would set them.
TOKEN=$(sed -n 's/^CIRCUS_WARDEN_SERVER__TOKENS=.*token="\([^"]*\)".*/\1/p' "$WORK/pod/warden.env" | head -n 1)
INIT='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"0"}}}'
mcp_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST "http://127.0.0.1:$PORT/mcp" \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' "$@" --data "$INIT"
}
[[ -n $TOKEN ]] || { echo "no token in the rendered warden env" >&2; exit 1; }
code=$(mcp_status -H "Authorization: Bearer $TOKEN"); echo "POST /mcp initialize with the token -> $code"; [[ $code == 200 ]]
code=$(mcp_status); echo "POST /mcp initialize without a token -> $code"; [[ $code == 401 ]]
if ! timeout 150 "$VPY" tests/deploy/hostile_smoke.py --url "http://127.0.0.1:$PORT/mcp" --token "$TOKEN" \
        --host-control "$RUN_DIR/control.sock" --container "$CD"; then
    echo "----- circusd log"; docker logs "$CD" 2>&1 | tail -n 40
    echo "----- warden log"; docker logs "$CW" 2>&1 | tail -n 40
    exit 1
fi
docker stop -t 20 "$CW" "$CD" >/dev/null
echo "exit codes after docker stop: warden $(docker inspect -f '{{.State.ExitCode}}' "$CW"), circusd $(docker inspect -f '{{.State.ExitCode}}' "$CD")"
