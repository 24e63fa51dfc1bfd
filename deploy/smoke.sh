#!/usr/bin/env bash
# End-to-end smoke test of the container stack on a Debian machine with no container registry:
#   1. installs docker.io, docker-compose and debootstrap if missing, starts dockerd if none runs;
#   2. builds the base images locally (debootstrap + docker import): a runtime base (bash, CA
#      certificates, git) and a builder base (gcc, cmake, perl + this machine's Rust toolchain
#      and cargo-chef), so no registry is ever needed;
#   3. builds the five service images from deploy/Dockerfile;
#   4. runs the compose project's core services, waits until all five are healthy;
#   5. submits a patch through the gateway and checks the workspace change (in the executor's
#      volume), the summary (API and the summarizer's files) and the Slack message the alerter
#      recorded (logged, as Slack is off here);
#   6. tears everything down (containers, volumes, network, dockerd if it started it) on any exit.
#
# Usage: deploy/smoke.sh          (as root; crates.io must be reachable for the cargo build)
# Knobs (environment): SMOKE_KEEP_IMAGES=1 keeps the built images; SMOKE_DOCKERD_ARGS extra
# dockerd flags (e.g. "--storage-driver=vfs --iptables=false" inside a container);
# SMOKE_PORT_BASE (default 18080) host ports base; SMOKE_STRICT_METRICS=1 makes a failing
# `promtool check metrics` fail the run; timeouts SMOKE_BUILD_TIMEOUT (s, per image, 2400),
# SMOKE_UP_TIMEOUT (180), SMOKE_PATCH_TIMEOUT (90).
# Prints image sizes, cold start to all-healthy time and total duration.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SERVICES=(alerter summarizer router executor gateway)
TAG=smoke
PROJECT="ghostsmoke$$"
BUILD_TIMEOUT=${SMOKE_BUILD_TIMEOUT:-2400}
UP_TIMEOUT=${SMOKE_UP_TIMEOUT:-180}
PATCH_TIMEOUT=${SMOKE_PATCH_TIMEOUT:-90}
PORT_BASE=${SMOKE_PORT_BASE:-18080}
RUST_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
CARGO_CHEF_VERSION=0.1.78
RUNTIME_BASE=ghost-local/runtime-base:bookworm
BUILDER_BASE=ghost-local/builder-base:${RUST_TOOLCHAIN}
START=$(date +%s)
WORK=$(mktemp -d /tmp/ghost-smoke.XXXXXX)
STARTED_DOCKERD_PID=""
COMPOSE_UP=0
COMPOSE=()

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ $COMPOSE_UP == 1 ]]; then
    if [[ $rc != 0 ]]; then
      log "logs of the failed run:"
      "${COMPOSE[@]}" ps >&2
      "${COMPOSE[@]}" logs --no-color --tail=60 >&2
    fi
    log "tearing down the compose project $PROJECT (containers, volumes, network)"
    timeout 120 "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 30 >&2
  fi
  if [[ -z ${SMOKE_KEEP_IMAGES:-} ]] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    for service in "${SERVICES[@]}"; do
      docker image rm -f "ghost-runner/$service:$TAG" >/dev/null 2>&1
    done
  fi
  if [[ -n $STARTED_DOCKERD_PID ]]; then
    log "stopping the dockerd this run started (pid $STARTED_DOCKERD_PID)"
    kill "$STARTED_DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$STARTED_DOCKERD_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
  log "done in $(( $(date +%s) - START )) s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

[[ $(id -u) == 0 ]] || die "run as root (installs packages, may start dockerd)"
[[ -n $RUST_TOOLCHAIN ]] || die "no toolchain channel in rust-toolchain.toml"

# ---- 1. tools ---------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if ! timeout 10 docker info >/dev/null 2>&1; then
  log "no docker daemon answers; starting dockerd"
  # shellcheck disable=SC2086 # SMOKE_DOCKERD_ARGS is a list of flags
  dockerd ${SMOKE_DOCKERD_ARGS:-} >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    timeout 5 docker info >/dev/null 2>&1 && break
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  timeout 5 docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
fi
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" --env-file "$WORK/.env")

# ---- 2. base images (no registry) -------------------------------------------------------------
import_rootfs() { # image rootfs [--change ...]
  local image=$1 rootfs=$2
  shift 2
  tar --numeric-owner -C "$rootfs" -c . | docker import "$@" - "$image" >/dev/null
}

if ! docker image inspect "$RUNTIME_BASE" >/dev/null 2>&1; then
  log "building $RUNTIME_BASE with debootstrap"
  timeout 900 debootstrap --variant=minbase --include=bash,ca-certificates,git \
    bookworm "$WORK/runtime-rootfs" http://deb.debian.org/debian >"$WORK/debootstrap-runtime.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap-runtime.log" >&2; die "debootstrap (runtime) failed"; }
  rm -rf "$WORK/runtime-rootfs/var/cache/apt/archives/"*.deb "$WORK/runtime-rootfs/var/lib/apt/lists/"*
  import_rootfs "$RUNTIME_BASE" "$WORK/runtime-rootfs" --change 'CMD ["/bin/bash"]'
  rm -rf "$WORK/runtime-rootfs"
fi

if ! docker image inspect "$BUILDER_BASE" >/dev/null 2>&1; then
  log "building $BUILDER_BASE with debootstrap + this machine's Rust $RUST_TOOLCHAIN"
  sysroot=$(rustup run "$RUST_TOOLCHAIN" rustc --print sysroot) \
    || die "Rust $RUST_TOOLCHAIN is not installed on this machine (rustup toolchain install $RUST_TOOLCHAIN)"
  timeout 900 debootstrap --variant=minbase \
    --include=bash,ca-certificates,git,gcc,g++,libc6-dev,make,cmake,perl,pkg-config,binutils \
    bookworm "$WORK/builder-rootfs" http://deb.debian.org/debian >"$WORK/debootstrap-builder.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap-builder.log" >&2; die "debootstrap (builder) failed"; }
  mkdir -p "$WORK/builder-rootfs/usr/local/rust" "$WORK/builder-rootfs/usr/local/cargo/bin"
  cp -a "$sysroot/." "$WORK/builder-rootfs/usr/local/rust/"
  log "installing cargo-chef $CARGO_CHEF_VERSION for the builder base"
  timeout 1200 cargo install --locked --quiet cargo-chef --version "$CARGO_CHEF_VERSION" --root "$WORK/chef" >&2 \
    || die "cargo install cargo-chef failed"
  cp "$WORK/chef/bin/cargo-chef" "$WORK/builder-rootfs/usr/local/cargo/bin/"
  rm -rf "$WORK/builder-rootfs/var/cache/apt/archives/"*.deb
  import_rootfs "$BUILDER_BASE" "$WORK/builder-rootfs" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]'
  rm -rf "$WORK/builder-rootfs" "$WORK/chef"
fi

# ---- 3. service images ------------------------------------------------------------------------
build_start=$(date +%s)
for service in "${SERVICES[@]}"; do
  log "building ghost-runner/$service:$TAG"
  # --network host: the dependency layer downloads crates from crates.io.
  timeout "$BUILD_TIMEOUT" docker build --network host -f deploy/Dockerfile \
    --build-arg SERVICE="$service" \
    --build-arg BUILDER_IMAGE="$BUILDER_BASE" \
    --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
    --build-arg RUST_TOOLCHAIN="$RUST_TOOLCHAIN" \
    -t "ghost-runner/$service:$TAG" . >"$WORK/build-$service.log" 2>&1 \
    || { tail -40 "$WORK/build-$service.log" >&2; die "docker build of $service failed"; }
done
build_seconds=$(( $(date +%s) - build_start ))

# ---- 4. compose up ----------------------------------------------------------------------------
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
API_KEY=$(random_hex 24)
cat >"$WORK/.env" <<ENV
GHOST_API_KEY=$API_KEY
GHOST_EXECUTOR_TOKEN=$(random_hex 24)
GHOST_IMAGE_TAG=$TAG
GHOST_LOG=info
GHOST_HTTP_PORT=$PORT_BASE
GHOST_ROUTER_HTTP_PORT=$((PORT_BASE + 1))
GHOST_EXECUTOR_HTTP_PORT=$((PORT_BASE + 2))
GHOST_SUMMARIZER_HTTP_PORT=$((PORT_BASE + 3))
GHOST_ALERTER_HTTP_PORT=$((PORT_BASE + 4))
ENV
chmod 600 "$WORK/.env"

"${COMPOSE[@]}" config -q || die "docker-compose.yml does not validate"
log "starting the core services (project $PROJECT)"
up_start=$(date +%s)
COMPOSE_UP=1
"${COMPOSE[@]}" up -d --no-build >&2

all_healthy() {
  local service id status
  for service in "${SERVICES[@]}"; do
    id=$("${COMPOSE[@]}" ps -q "$service")
    [[ -n $id ]] || return 1
    status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
    [[ $status == healthy ]] || return 1
  done
}
until all_healthy; do
  (( $(date +%s) - up_start < UP_TIMEOUT )) || die "services not all healthy within $UP_TIMEOUT s"
  sleep 1
done
cold_start_seconds=$(( $(date +%s) - up_start ))
log "all five services healthy after $cold_start_seconds s"

# ---- 5. one patch end to end ------------------------------------------------------------------
GATEWAY="http://127.0.0.1:$PORT_BASE"
PATCH_ID="smoke-$(random_hex 6)"
NONCE=$(random_hex 16)
cat >"$WORK/patch.json" <<JSON
{"id": "$PATCH_ID", "target": "MAIN", "description": "deploy/smoke.sh",
 "edits": [{"op": "write", "path": "smoke/$PATCH_ID.txt", "contents": "$NONCE\n"}]}
JSON
code=$(curl -sS --max-time 15 -o "$WORK/submit.json" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" -H 'content-type: application/json' \
  --data-binary @"$WORK/patch.json" "$GATEWAY/v1/patches") || die "cannot reach the gateway"
[[ $code == 202 ]] || die "submit answered $code: $(cat "$WORK/submit.json")"
log "patch $PATCH_ID accepted"

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$@"; }
patch_start=$(date +%s)
status=""
while :; do
  curl -fsS --max-time 10 -H "Authorization: Bearer $API_KEY" "$GATEWAY/v1/patches/$PATCH_ID" \
    -o "$WORK/patch-status.json" && status=$(json_field "$WORK/patch-status.json" status)
  case $status in
    succeeded) break ;;
    failed|rolled_back|cancelled|timed_out|rejected|lost) die "patch ended $status: $(cat "$WORK/patch-status.json")" ;;
  esac
  (( $(date +%s) - patch_start < PATCH_TIMEOUT )) || die "patch not succeeded within $PATCH_TIMEOUT s (last: ${status:-none})"
  sleep 1
done
log "patch succeeded after $(( $(date +%s) - patch_start )) s"

written=$("${COMPOSE[@]}" exec -T executor cat "/workspace/smoke/$PATCH_ID.txt" | tr -d '\r\n')
[[ $written == "$NONCE" ]] || die "workspace file holds '$written', expected '$NONCE'"
log "workspace change found in the executor's volume"

# The summary: in the API answer once the patch ended, and as files in the summarizer's volume.
summary_ok=0
for _ in $(seq 1 30); do
  curl -fsS --max-time 10 -H "Authorization: Bearer $API_KEY" "$GATEWAY/v1/patches/$PATCH_ID" -o "$WORK/patch-status.json" \
    && [[ $(json_field "$WORK/patch-status.json" summary) == *"$PATCH_ID"* ]] \
    && "${COMPOSE[@]}" exec -T summarizer test -s "/data/summaries/MAIN/summary-$PATCH_ID.md" \
    && "${COMPOSE[@]}" exec -T summarizer test -s "/data/summaries/MAIN/summary-$PATCH_ID.json" \
    && { summary_ok=1; break; }
  sleep 1
done
[[ $summary_ok == 1 ]] || die "no summary for $PATCH_ID (API and /data/summaries/MAIN/summary-$PATCH_ID.{md,json})"
log "summary found (API and files)"

# Slack is off in this stack: the alerter records the message in its log and counts it.
slack_ok=0
for _ in $(seq 1 45); do
  if "${COMPOSE[@]}" logs --no-color alerter 2>/dev/null | grep -F "message logged only" | grep -qF "$PATCH_ID"; then
    slack_ok=1
    break
  fi
  sleep 1
done
[[ $slack_ok == 1 ]] || die "the alerter recorded no Slack message naming $PATCH_ID"
curl -fsS --max-time 10 "http://127.0.0.1:$((PORT_BASE + 4))/metrics" | grep -q '^ghost_slack_deliveries_total{result="logged"}' \
  || die "ghost_slack_deliveries_total{result=\"logged\"} missing from the alerter's /metrics"
log "Slack message recorded by the alerter"

# /metrics of every service through promtool (deploy/prometheus/check-metrics.sh).
if command -v promtool >/dev/null 2>&1; then
  urls=()
  for offset in 0 1 2 3 4; do urls+=("http://127.0.0.1:$((PORT_BASE + offset))/metrics"); done
  if deploy/prometheus/check-metrics.sh "${urls[@]}" >&2; then
    log "promtool check metrics passed on all five services"
  elif [[ -n ${SMOKE_STRICT_METRICS:-} ]]; then
    die "promtool check metrics failed"
  else
    log "WARNING: promtool check metrics failed (SMOKE_STRICT_METRICS=1 makes this fatal)"
  fi
fi

# ---- report -----------------------------------------------------------------------------------
log "image sizes:"
for service in "${SERVICES[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "ghost-runner/$service:$TAG")
  printf '  ghost-runner/%-11s %6d MB\n' "$service:$TAG" $((size / 1000 / 1000)) >&2
done
log "image builds: $build_seconds s; cold start to all-healthy: $cold_start_seconds s; total so far: $(( $(date +%s) - START )) s"
echo "smoke: 1 passed, 0 failed"
