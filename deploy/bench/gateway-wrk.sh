#!/usr/bin/env bash
# Durable intake through the gateway, measured with wrk: POST /v1/patches (a real router on the
# same machine, each patch committed with fsync before its 202) at 8 and 64 connections, beside
# GET /healthz on the same axum stack. Loopback only, 10 s per run, cleans up its processes.
# Needs: wrk (Debian), release binaries (cargo build --release -p gateway -p router --bins).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release
work=$(mktemp -d)
export GHOST_API_KEY=bench-key-0123456789abcdef
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

GHOST_ROUTER__DATA_DIR=$work/router GHOST_ROUTER__SERVER__GRPC_LISTEN=127.0.0.1:51051 \
  GHOST_ROUTER__SERVER__HTTP_LISTEN=127.0.0.1:51081 RUST_LOG=warn "$bin/router" >"$work/router.log" 2>&1 &
pids+=($!)
GHOST_GATEWAY__ROUTER_URL=http://127.0.0.1:51051 GHOST_GATEWAY__SUMMARIZER_URL=http://127.0.0.1:51053 \
  GHOST_GATEWAY__API_KEY=$GHOST_API_KEY GHOST_GATEWAY__RATE_LIMIT__PER_MINUTE=100000000 \
  GHOST_GATEWAY__RATE_LIMIT__BURST=1000000 GHOST_GATEWAY__SERVER__GRPC_LISTEN=127.0.0.1:51050 \
  GHOST_GATEWAY__SERVER__HTTP_LISTEN=127.0.0.1:51080 RUST_LOG=warn "$bin/gateway" >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:51080/readyz && break; sleep 0.1; done

for connections in 8 64; do
  echo "== POST /v1/patches, $connections connections"
  wrk -t2 -c"$connections" -d10s --latency -s deploy/bench/post-patches.lua http://127.0.0.1:51080 |
    grep -E " 50%| 99%|Requests/sec|non-2xx|Non-2xx"
done
echo "== GET /healthz, 8 connections (same axum stack, trivial handler)"
wrk -t2 -c8 -d10s --latency http://127.0.0.1:51080/healthz | grep -E " 50%| 99%|Requests/sec"
