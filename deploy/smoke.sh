#!/usr/bin/env bash
# End-to-end smoke test of the container stack on a Debian machine with no container registry:
#   1. installs docker.io, docker-compose and debootstrap if missing, starts dockerd if none runs;
#   2. builds the base images locally, so no registry is ever needed:
#      - a slim runtime base FROM scratch: glibc, libgcc_s and CA certificates only (gateway,
#        router, summarizer, alerter; their health check is the binary's own --healthcheck);
#      - an executor runtime base (debootstrap minbase + git + CA certificates: the executor
#        runs /bin/sh and git);
#      - a builder base (debootstrap + gcc, cmake, perl + this machine's Rust toolchain and
#        cargo-chef);
#   3. builds the five service images and the `ghost` image (compose's one-shot tls-init: CA,
#      server certificate and service credential into the `tls` volume) from deploy/Dockerfile
#      (one shared compile);
#   4. starts, beside the stack, its outside peers speaking their real wire formats
#      (tests/python/compose_peers.py: an OTLP/gRPC trace receiver and a fake Slack Web API),
#      runs the compose project's core services exporting spans and posting to them, and waits
#      until all five are healthy (they start only after tls-init exited 0); checks the
#      router's executor port published on 127.0.0.1: TLS with a certificate for localhost that
#      the tls-init CA verifies and the system roots do not;
#   5. submits a patch through the gateway and checks the workspace change (in the executor's
#      volume), the summary (API and the summarizer's files), the Slack message the alerter
#      posted, that /v1/alerts and /ui/alerts (after a dashboard login) answer 200 (gateway ->
#      alerter), that /metrics, /healthz and /readyz answer 404 on the gateway's and the
#      alerter's public ports and 200 on their operations ports (9464, published by this run
#      only), that the gateway image refuses .env.example's placeholder key naming the
#      variable, and that the patch's one trace id reached the receiver from all five services;
#   6. tears everything down (containers, volumes, network, peers, dockerd if it started it).
#
# Usage: deploy/smoke.sh   (as root; the Debian and crate registries must be reachable)
# Knobs (environment): SMOKE_KEEP_IMAGES=1 keeps the built images; SMOKE_DOCKERD_ARGS extra
# dockerd flags (e.g. "--storage-driver=vfs --iptables=false" inside a container);
# SMOKE_PORT_BASE (default 18080) host ports base; SMOKE_STRICT_METRICS=1 makes a failing
# `promtool check metrics` fail the run; timeouts SMOKE_BUILD_TIMEOUT (s, per image, 2400),
# SMOKE_UP_TIMEOUT (180), SMOKE_PATCH_TIMEOUT (90); SMOKE_DEBIAN_MIRROR (default: the first
# Debian mirror of this machine's apt sources).
# Prints image sizes, cold start to all-healthy time and total duration.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SERVICES=(alerter summarizer router executor gateway)
# Every image the stack runs: the five services and the ghost CLI (tls-init).
IMAGES=(ghost "${SERVICES[@]}")
TAG=smoke
PROJECT="ghostsmoke$$"
BUILD_TIMEOUT=${SMOKE_BUILD_TIMEOUT:-2400}
UP_TIMEOUT=${SMOKE_UP_TIMEOUT:-180}
PATCH_TIMEOUT=${SMOKE_PATCH_TIMEOUT:-90}
PORT_BASE=${SMOKE_PORT_BASE:-18080}
RUST_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
CARGO_CHEF_VERSION=0.1.78
SUITE=bookworm
RUNTIME_BASE=ghost-local/runtime-slim:$SUITE
EXECUTOR_BASE=ghost-local/runtime-executor:$SUITE
BUILDER_BASE=ghost-local/builder-base:${RUST_TOOLCHAIN}
PEERS_PID=""
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
    for image in "${IMAGES[@]}"; do
      docker image rm -f "ghost-runner/$image:$TAG" >/dev/null 2>&1
    done
  fi
  if [[ -n $PEERS_PID ]]; then
    kill "$PEERS_PID" 2>/dev/null
    wait "$PEERS_PID" 2>/dev/null
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
COMPOSE=(docker-compose -p "$PROJECT" --env-file "$WORK/.env" -f "$ROOT/docker-compose.yml")

# ---- 2. base images (no registry) -------------------------------------------------------------
import_rootfs() { # image rootfs [--change ...]
  local image=$1 rootfs=$2
  shift 2
  tar --numeric-owner -C "$rootfs" -c . | docker import "$@" - "$image" >/dev/null
}

# The Debian mirror this machine already uses (deb822 .sources or one-line sources.list).
debian_mirror() {
  if [[ -n ${SMOKE_DEBIAN_MIRROR:-} ]]; then echo "$SMOKE_DEBIAN_MIRROR"; return; fi
  local found
  found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
  if [[ -z $found ]]; then
    found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }')
  fi
  [[ -n $found ]] || die "no Debian mirror in this machine's apt sources (set SMOKE_DEBIAN_MIRROR)"
  echo "$found"
}

bootstrap() { # rootfs packages
  local rootfs=$1 packages=$2 name
  name=$(basename "$rootfs")
  timeout 900 debootstrap --variant=minbase --include="$packages" \
    "$SUITE" "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap-$name.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap-$name.log" >&2; die "debootstrap ($name) failed"; }
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* \
    "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/info" "$rootfs/usr/share/locale"
}

if ! docker image inspect "$EXECUTOR_BASE" >/dev/null 2>&1 || ! docker image inspect "$RUNTIME_BASE" >/dev/null 2>&1; then
  log "building $EXECUTOR_BASE with debootstrap"
  bootstrap "$WORK/executor-rootfs" bash,ca-certificates,git
  import_rootfs "$EXECUTOR_BASE" "$WORK/executor-rootfs" --change 'CMD ["/bin/bash"]'

  # The slim base: only what the four other binaries load (glibc, libm, libgcc_s, the dynamic
  # loader) and the CA bundle (TLS to Slack), taken from the same Debian release.
  log "building $RUNTIME_BASE FROM scratch with the libraries the services load"
  slim=$WORK/slim-rootfs
  mkdir -p "$slim/lib/x86_64-linux-gnu" "$slim/lib64" "$slim/etc/ssl/certs" "$slim/tmp"
  chmod 1777 "$slim/tmp"
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do
    cp -L "$WORK/executor-rootfs/lib/x86_64-linux-gnu/$lib" "$slim/lib/x86_64-linux-gnu/"
  done
  cp -L "$WORK/executor-rootfs/lib64/ld-linux-x86-64.so.2" "$slim/lib64/"
  cp -L "$WORK/executor-rootfs/etc/ssl/certs/ca-certificates.crt" "$slim/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nghost:x:65532:65532:ghost:/nonexistent:/sbin/nologin\n' >"$slim/etc/passwd"
  printf 'root:x:0:\nghost:x:65532:\n' >"$slim/etc/group"
  import_rootfs "$RUNTIME_BASE" "$slim"
  rm -rf "$WORK/executor-rootfs" "$slim"
fi

if ! docker image inspect "$BUILDER_BASE" >/dev/null 2>&1; then
  log "building $BUILDER_BASE with debootstrap + this machine's Rust $RUST_TOOLCHAIN"
  sysroot=$(rustup run "$RUST_TOOLCHAIN" rustc --print sysroot) \
    || die "Rust $RUST_TOOLCHAIN is not installed on this machine (rustup toolchain install $RUST_TOOLCHAIN)"
  bootstrap "$WORK/builder-rootfs" bash,ca-certificates,git,gcc,g++,libc6-dev,make,cmake,perl,pkg-config,binutils
  mkdir -p "$WORK/builder-rootfs/usr/local/rust" "$WORK/builder-rootfs/usr/local/cargo/bin"
  cp -a "$sysroot/." "$WORK/builder-rootfs/usr/local/rust/"
  rm -rf "$WORK/builder-rootfs/usr/local/rust/share/doc"
  # The build fetches crates the way this machine does: trust what this machine trusts (a
  # network may put its own CA between here and the registry).
  cp -L /etc/ssl/certs/ca-certificates.crt "$WORK/builder-rootfs/etc/ssl/certs/ca-certificates.crt"
  if command -v cargo-chef >/dev/null 2>&1; then
    cp "$(command -v cargo-chef)" "$WORK/builder-rootfs/usr/local/cargo/bin/"
  else
    log "installing cargo-chef $CARGO_CHEF_VERSION for the builder base"
    timeout 1200 cargo install --locked --quiet cargo-chef --version "$CARGO_CHEF_VERSION" --root "$WORK/chef" >&2 \
      || die "cargo install cargo-chef failed"
    cp "$WORK/chef/bin/cargo-chef" "$WORK/builder-rootfs/usr/local/cargo/bin/"
  fi
  import_rootfs "$BUILDER_BASE" "$WORK/builder-rootfs" \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]'
  rm -rf "$WORK/builder-rootfs" "$WORK/chef"
fi

# ---- 3. service images ------------------------------------------------------------------------
build_start=$(date +%s)
for image in "${IMAGES[@]}"; do
  runtime=$RUNTIME_BASE
  [[ $image == executor ]] && runtime=$EXECUTOR_BASE
  log "building ghost-runner/$image:$TAG"
  # --network host: the dependency layer downloads crates from the crate registry. The build
  # stages do not depend on SERVICE, so only the first image compiles.
  timeout "$BUILD_TIMEOUT" docker build --network host -f deploy/Dockerfile \
    --build-arg SERVICE="$image" \
    --build-arg BUILDER_IMAGE="$BUILDER_BASE" \
    --build-arg RUNTIME_IMAGE="$runtime" \
    --build-arg RUST_TOOLCHAIN="$RUST_TOOLCHAIN" \
    -t "ghost-runner/$image:$TAG" . >"$WORK/build-$image.log" 2>&1 \
    || { tail -40 "$WORK/build-$image.log" >&2; die "docker build of $image failed"; }
done
build_seconds=$(( $(date +%s) - build_start ))

# ---- 4. compose up ----------------------------------------------------------------------------
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
API_KEY=$(random_hex 24)
# The secrets are files (compose secrets), read by the services' user 65532.
mkdir -m 700 "$WORK/secrets"
printf '%s\n' "$API_KEY" >"$WORK/secrets/api-key"
random_hex 24 >"$WORK/secrets/executor-token"
random_hex 24 >"$WORK/secrets/grafana-admin-password"
chmod 644 "$WORK/secrets/"*
cat >"$WORK/.env" <<ENV
GHOST_SECRETS_DIR=$WORK/secrets
GHOST_IMAGE_TAG=$TAG
GHOST_LOG=info
GHOST_HTTP_PORT=$PORT_BASE
GHOST_ALERTER_HTTP_PORT=$((PORT_BASE + 4))
GHOST_EXECUTOR_PORT=$((PORT_BASE + 5))
ENV
chmod 600 "$WORK/.env"

# The stack's outside peers, on the host side of Docker's default bridge, which containers reach
# as host.docker.internal (host-gateway): an OTLP/gRPC trace receiver and a fake Slack Web API.
# host-gateway is the address of the default bridge's interface (docker0).
PEER_IP=$(ip -4 -o addr show docker0 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
[[ -n $PEER_IP ]] || PEER_IP=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[[ -n $PEER_IP ]] || die "cannot find the address of Docker's default bridge (docker0)"
OTLP_PORT=$((PORT_BASE + 10))
SLACK_PORT=$((PORT_BASE + 11))
"$ROOT/scripts/python-env" >/dev/null || die "scripts/python-env failed"
"$ROOT/.venv/bin/python" "$ROOT/tests/python/compose_peers.py" --host "$PEER_IP" \
  --otlp-port "$OTLP_PORT" --slack-port "$SLACK_PORT" \
  --spans "$WORK/spans.jsonl" --slack "$WORK/slack.jsonl" >"$WORK/peers.out" 2>"$WORK/peers.log" &
PEERS_PID=$!
for _ in $(seq 1 50); do grep -q ready "$WORK/peers.out" 2>/dev/null && break; sleep 0.2; done
grep -q ready "$WORK/peers.out" || { cat "$WORK/peers.log" >&2; die "the trace receiver / fake Slack did not start"; }
cat >>"$WORK/.env" <<ENV
GHOST_OTLP_ENDPOINT=http://host.docker.internal:$OTLP_PORT
SLACK_BOT_TOKEN=xoxb-smoke-$(random_hex 8)
SLACK_CHANNEL=#ghost-smoke
ENV
# The operations port (9464: /healthz, /readyz, /metrics) is not published by
# docker-compose.yml; this run publishes it on 127.0.0.1 to read every service's /metrics.
ops_port() { # service
  local i
  for i in "${!SERVICES[@]}"; do
    if [[ ${SERVICES[$i]} == "$1" ]]; then
      echo $((PORT_BASE + 20 + i))
      return 0
    fi
  done
  echo "ops_port: unknown service $1" >&2
  return 1
}
{
  echo "services:"
  for service in "${SERVICES[@]}"; do
    echo "  $service:"
    echo "    extra_hosts: [\"host.docker.internal:host-gateway\"]"
    echo "    ports: [\"127.0.0.1:$(ops_port "$service"):9464\"]"
    if [[ $service == alerter ]]; then
      echo "    environment:"
      echo "      GHOST_ALERTER__SLACK__API_BASE_URL: http://host.docker.internal:$SLACK_PORT/api"
    fi
  done
} >"$WORK/override.yml"
COMPOSE+=(-f "$WORK/override.yml")

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

# The router's executor port as an executor on this host sees it: TLS, a certificate for
# localhost that the CA tls-init made verifies (copied out of the tls volume; the slim image
# has no shell), and that the system roots refuse (it is the private CA, not a public one).
router_id=$("${COMPOSE[@]}" ps -q router)
docker cp "$router_id:/tls/ca.pem" "$WORK/ca.pem" || die "no /tls/ca.pem in the router container (tls-init)"
python3 - "$WORK/ca.pem" "$((PORT_BASE + 5))" >&2 <<'PY' || die "the executor port does not serve TLS with the tls-init CA"
import socket, ssl, sys
ca, port = sys.argv[1], int(sys.argv[2])
def handshake(ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version()
print(f"executor port 127.0.0.1:{port}: {handshake(ssl.create_default_context(cafile=ca))} with the tls-init CA")
try:
    handshake(ssl.create_default_context())
except ssl.SSLCertVerificationError:
    print("executor port: refused by the system roots, as it must be (private CA)")
else:
    sys.exit("the executor port's certificate verified against the system roots: not the tls-init CA")
PY
log "executor port: TLS with the tls-init CA"

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

# The summary: in the API answer once the patch ended, and as files in the summarizer's volume
# (copied out with `docker cp`: the slim image has no shell or coreutils to run inside it).
summarizer_id=$("${COMPOSE[@]}" ps -q summarizer)
summary_ok=0
for _ in $(seq 1 30); do
  curl -fsS --max-time 10 -H "Authorization: Bearer $API_KEY" "$GATEWAY/v1/patches/$PATCH_ID" -o "$WORK/patch-status.json" \
    && [[ $(json_field "$WORK/patch-status.json" summary) == *"$PATCH_ID"* ]] \
    && docker cp "$summarizer_id:/data/summaries/MAIN/summary-$PATCH_ID.md" "$WORK/" 2>/dev/null \
    && docker cp "$summarizer_id:/data/summaries/MAIN/summary-$PATCH_ID.json" "$WORK/" 2>/dev/null \
    && grep -qF "$PATCH_ID" "$WORK/summary-$PATCH_ID.md" \
    && json_field "$WORK/summary-$PATCH_ID.json" patch_id | grep -qxF "$PATCH_ID" \
    && { summary_ok=1; break; }
  sleep 1
done
[[ $summary_ok == 1 ]] || die "no summary for $PATCH_ID (API and /data/summaries/MAIN/summary-$PATCH_ID.{md,json})"
log "summary found (API and files)"

# The Slack message: posted by the alerter to the fake Slack Web API (chat.postMessage).
slack_ok=0
for _ in $(seq 1 45); do
  # grep -c reads to the end: `grep -q` would close the pipe early, and under pipefail the
  # writer's broken pipe fails the test even when the line is there.
  if [[ $(grep -F "$PATCH_ID" "$WORK/slack.jsonl" 2>/dev/null | grep -c '"method": "chat.postMessage"') -gt 0 ]]; then
    slack_ok=1
    break
  fi
  sleep 1
done
[[ $slack_ok == 1 ]] || die "the alerter posted no Slack message naming $PATCH_ID"
# The body first, then the search: piped into `grep -q`, curl could be cut off mid-body once
# the line was found, and under pipefail its exit 23 failed the run (seen once in CI).
alerter_metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$(ops_port alerter)/metrics") \
  || die "cannot read the alerter's /metrics"
grep -q '^ghost_slack_deliveries_total{result="ok"}' <<<"$alerter_metrics" \
  || die "ghost_slack_deliveries_total{result=\"ok\"} missing from the alerter's /metrics"
log "Slack message posted by the alerter"

# The alerts page is wired (gateway -> alerter): /v1/alerts and, after a dashboard login,
# /ui/alerts answer 200.
code=$(curl -sS --max-time 10 -o "$WORK/alerts.json" -w '%{http_code}' \
  -H "Authorization: Bearer $API_KEY" "$GATEWAY/v1/alerts") || code=000
[[ $code == 200 ]] || die "GET /v1/alerts answered $code: $(head -c 300 "$WORK/alerts.json" 2>/dev/null)"
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -c "$WORK/ui-cookies" \
  -H "Origin: $GATEWAY" --data-urlencode "key=$API_KEY" --data-urlencode "next=/ui/alerts" \
  "$GATEWAY/ui/login") || code=000
[[ $code == 303 ]] || die "POST /ui/login answered $code, not 303"
code=$(curl -sS --max-time 10 -o "$WORK/ui-alerts.html" -w '%{http_code}' -b "$WORK/ui-cookies" \
  "$GATEWAY/ui/alerts") || code=000
[[ $code == 200 ]] || die "GET /ui/alerts after login answered $code"
log "alerts: /v1/alerts and /ui/alerts (logged in) answer 200"

# The operations routes are not on the public ports: the gateway's and the alerter's answer 404
# for /metrics, /healthz and /readyz, which their operations ports serve.
for service in gateway alerter; do
  public_port=$PORT_BASE
  [[ $service == alerter ]] && public_port=$((PORT_BASE + 4))
  for route in /metrics /healthz /readyz; do
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$public_port$route") || code=000
    [[ $code == 404 ]] || die "$service: $route on the public port $public_port answered $code, not 404"
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(ops_port "$service")$route") || code=000
    [[ $code == 200 ]] || die "$service: $route on the operations port answered $code, not 200"
  done
done
gateway_metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$(ops_port gateway)/metrics") \
  || die "cannot read the gateway's /metrics on its operations port"
grep -q '^ghost_http_requests_total' <<<"$gateway_metrics" \
  || die "the gateway's operations port serves no ghost_http_requests_total"
log "operations routes: 404 on the public ports, 200 on the operations ports (9464)"

# A placeholder key is refused at start, naming the variable (the gateway image, as run).
if docker run --rm -e GHOST_GATEWAY__API_KEY=replace-with-a-random-key-of-16-or-more-chars \
    "ghost-runner/gateway:$TAG" --print-config >"$WORK/placeholder.out" 2>&1; then
  die "the gateway started with the placeholder API key of .env.example"
fi
if ! { grep -q 'GHOST_GATEWAY__API_KEY' "$WORK/placeholder.out" && grep -q 'placeholder' "$WORK/placeholder.out"; }; then
  die "the placeholder refusal does not name the variable: $(head -c 300 "$WORK/placeholder.out")"
fi
log "the placeholder API key is refused at start, naming GHOST_GATEWAY__API_KEY"

# One trace: the patch's trace id reached the receiver from all five services.
TRACE_ID=$(json_field "$WORK/patch-status.json" trace_id)
[[ $TRACE_ID =~ ^[0-9a-f]{32}$ ]] || die "the patch has no trace id: $(cat "$WORK/patch-status.json")"
trace_ok=0
for _ in $(seq 1 45); do
  # (no span yet is not an error: grep's status must not end the script under pipefail)
  seen=$({ grep -F "\"$TRACE_ID\"" "$WORK/spans.jsonl" 2>/dev/null || true; } \
    | "$ROOT/.venv/bin/python" -c 'import json,sys; print(" ".join(sorted({json.loads(l)["service"] for l in sys.stdin})))')
  if [[ $seen == "alerter executor gateway router summarizer" ]]; then
    trace_ok=1
    break
  fi
  sleep 1
done
[[ $trace_ok == 1 ]] || die "trace $TRACE_ID reached the receiver from [${seen:-none}], not all five services"
log "trace $TRACE_ID: spans from all five services ($(grep -cF "\"$TRACE_ID\"" "$WORK/spans.jsonl") spans)"

# /metrics of every service through promtool (deploy/prometheus/check-metrics.sh).
if command -v promtool >/dev/null 2>&1; then
  urls=()
  for service in "${SERVICES[@]}"; do urls+=("http://127.0.0.1:$(ops_port "$service")/metrics"); done
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
for image in "${IMAGES[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "ghost-runner/$image:$TAG")
  printf '  ghost-runner/%-11s %6d MB\n' "$image:$TAG" $((size / 1000 / 1000)) >&2
done
log "image builds: $build_seconds s; cold start to all-healthy: $cold_start_seconds s; total so far: $(( $(date +%s) - START )) s"
echo "smoke: 1 passed, 0 failed"
