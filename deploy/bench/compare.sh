#!/usr/bin/env bash
# Side by side on this machine, in one invocation, loopback only:
#   (a) wrk against a bare axum handler (bench-bare-axum: no middleware, answers 202),
#   (b) wrk against the gateway's POST /v1/patches with durable acceptance: the five services
#       started by `ghost-bench --serve` from release binaries, every 202 sent only after the
#       router committed the patch with fsync (target INTAKE has no executor, so the patches
#       wait durably and only intake is measured),
#   (c) Debian's `webhook` (adnanh/webhook) running a one-line script per request in its
#       synchronous mode (include-command-output-in-response: true),
# each at 8 and 64 connections for DURATION (default 10s), then prints req/s, p50/p99 and ratios.
# Installs wrk and webhook with apt-get if missing; stops every process it started, by PID.
#
# Usage: deploy/bench/compare.sh            (after: cargo build --release -p ghost-bench
#                                             -p router -p executor -p gateway -p summarizer -p alerter)
# Env:   BIN_DIR (default: $CARGO_TARGET_DIR/release or target/release), DURATION (10s),
#        CONNECTIONS ("8 64"), THREADS (2),
#        STORE (unset: ghost-bench's default, sqlite): ghost-bench's --store for (b): `postgres`
#          puts the router, summarizer and alerter on a throwaway PostgreSQL (fsync on) started
#          for the run, or a postgres:// URL,
#        BENCH_ARGS: more ghost-bench arguments for (b), split on spaces (e.g. --set ...),
#        SERVERS ("bare gateway webhook"): which of (a) (b) (c) to start and measure, e.g.
#          SERVERS=gateway for durable intake alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-8 64}
threads=${THREADS:-2}
store=${STORE:-}
servers=${SERVERS:-bare gateway webhook}
lua=$root/deploy/bench/post.lua
serves() { case " $servers " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
bench_args=()
[ -z "$store" ] || bench_args+=(--store "$store")
# shellcheck disable=SC2206  # split on spaces on purpose
[ -z "${BENCH_ARGS:-}" ] || bench_args+=($BENCH_ARGS)

tools="wrk curl"
serves webhook && tools="$tools webhook"
for tool in $tools; do
  if ! command -v "$tool" >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "$tool" >/dev/null
  fi
done
binaries="ghost-bench router gateway executor summarizer alerter"
serves bare && binaries="$binaries bench-bare-axum"
for binary in $binaries; do
  [ -x "$bin/$binary" ] || { echo "missing $bin/$binary: build the release binaries first" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317  # run by the trap below (shellcheck cannot see it past `exit`)
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    # ghost-bench stops its services and its PostgreSQL first: give it time.
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() { # url [method]
  for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X "${2:-GET}" "$1" || true)
    [ "$code" != "000" ] && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2
  return 1
}

# (a) bare axum
bare_port=$(free_port)
if serves bare; then
  "$bin/bench-bare-axum" "127.0.0.1:$bare_port" >"$work/bare.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$bare_port/"
fi

# (b) the five services, started and kept up by ghost-bench (one warm-up patch through them)
# INTAKE is served by no executor (patches are stored and wait), so the gateway must accept a
# target no executor serves: without this every POST was a 422 "unknown target", and the
# figures measured refusals (an error count as large as the requests).
"$bin/ghost-bench" -n 1 -c 1 --serve --url-file "$work/gateway" --work-dir "$work" \
  --set gateway.accept_unknown_targets=true \
  "${bench_args[@]}" --json "$work/warmup.json" >"$work/ghost-bench.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [ -s "$work/gateway" ] && break; sleep 0.1; done
[ -s "$work/gateway" ] || { echo "the system did not start; see $work/ghost-bench.log" >&2; cat "$work/ghost-bench.log" >&2; exit 1; }
read -r gateway_url api_key <"$work/gateway"

# (c) webhook, synchronous: the answer waits for the script and carries its output
hook_port=$(free_port)
if serves webhook; then
  # shellcheck disable=SC2016  # $1 is for the hook script, not this shell
  printf '#!/bin/sh\necho "ok $1"\n' >"$work/hook.sh"
  chmod +x "$work/hook.sh"
  cat >"$work/hooks.json" <<JSON
[{"id": "run", "execute-command": "$work/hook.sh", "command-working-directory": "$work",
  "include-command-output-in-response": true,
  "pass-arguments-to-command": [{"source": "payload", "name": "id"}]}]
JSON
  webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$hook_port" >"$work/webhook.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$hook_port/hooks/run" POST
fi

# wrk → "req_per_s p50_ms p99_ms errors"
measure() { # name url path key connections
  local out
  out=$(BENCH_PATH=$3 GHOST_API_KEY=$4 BENCH_RUN="$5-$(date +%s%N)" \
    wrk -t"$threads" -c"$5" -d"$duration" --latency -s "$lua" "$2")
  echo "$out" >"$work/wrk-$1-$5.txt"
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^errors:/ { errors = $3 + $5 + $7 + $9 + $11 }
    END { printf "%.0f %.2f %.2f %d\n", rps, p50, p99, errors }'
}

declare -A result
declare -A url=([bare]="http://127.0.0.1:$bare_port" [gateway]="$gateway_url"
  [webhook]="http://127.0.0.1:$hook_port")
declare -A path=([bare]=/v1/patches [gateway]=/v1/patches [webhook]=/hooks/run)
declare -A key=([bare]="" [gateway]="$api_key" [webhook]="")
for c in $connections; do
  for name in bare gateway webhook; do
    case " $servers " in
      *" $name "*) result[$name,$c]=$(measure "$name" "${url[$name]}" "${path[$name]}" "${key[$name]}" "$c") ;;
      *) result[$name,$c]="0 0 0 0" ;;
    esac
  done
done

echo "compare.sh: wrk -t$threads -d$duration, loopback, $(nproc) cores; POST one-file patches; store ${store:-sqlite}; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s %5s %10s %9s %9s %7s\n' "server" "conns" "req/s" "p50 ms" "p99 ms" "errors"
for c in $connections; do
  for name in $servers; do
    case $name in
      bare) label="(a) bare axum handler" ;;
      gateway) label="(b) gateway POST /v1/patches, durable 202" ;;
      webhook) label="(c) webhook, synchronous one-line script" ;;
    esac
    read -r rps p50 p99 errors <<<"${result[$name,$c]}"
    printf '%-44s %5s %10s %9s %9s %7s\n' "$label" "$c" "$rps" "$p50" "$p99" "$errors"
  done
done
failed=0
for c in $connections; do
  for name in $servers; do
    read -r _ _ _ errors <<<"${result[$name,$c]}"
    if ((errors > 0)); then
      echo "compare.sh: $name at $c connections: $errors requests failed or were refused: not a throughput figure" >&2
      failed=1
    fi
  done
done
echo "ratios (req/s):"
for c in $connections; do
  read -r bare_rps _ <<<"${result[bare,$c]}"
  read -r gw_rps _ <<<"${result[gateway,$c]}"
  read -r hook_rps _ <<<"${result[webhook,$c]}"
  awk -v c="$c" -v b="$bare_rps" -v g="$gw_rps" -v h="$hook_rps" 'BEGIN {
    printf "  %s connections: gateway/bare %.3f, gateway/webhook %.2f, webhook/bare %.3f\n",
      c, (b > 0 ? g / b : 0), (h > 0 ? g / h : 0), (b > 0 ? h / b : 0) }'
done
exit "$failed"
