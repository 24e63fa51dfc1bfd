#!/usr/bin/env bash
# Where the disk time of a patch goes: starts the five services with `ghost-bench --serve`,
# attaches `strace -f -c -w` (wall time) (fsync, fdatasync) to each service, pushes N one-file patches
# through the gateway at concurrency C (`ghost-bench --url`), and prints per service the
# fsyncs per patch and the milliseconds spent in them per patch. Loopback only; stops what it
# started, by PID.
# Usage: deploy/bench/fsync-profile.sh [N=100] [C=1]   (release binaries in $BIN_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}
n=${1:-100}
c=${2:-1}
command -v strace >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -qq strace >/dev/null; }
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin/ghost-bench" -n 1 -c 1 --serve --url-file "$work/gateway" --work-dir "$work" >"$work/serve.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 600); do [ -s "$work/gateway" ] && break; sleep 0.1; done
read -r url key <"$work/gateway"
tracers=()
for pid in $(ps -o pid= --ppid "$server"); do
  name=$(basename "$(ps -o args= -p "$pid" | awk '{print $1}')")
  strace -f -c -w -e trace=fsync,fdatasync -o "$work/strace-$name-$pid.txt" -p "$pid" 2>/dev/null &
  tracers+=($!)
done
sleep 1
"$bin/ghost-bench" --url "$url" --api-key "$key" -n "$n" -c "$c" --target-name BENCH-1 \
  --fsync-samples 200 >"$work/run.txt"
sleep 2
for pid in "${tracers[@]}"; do kill -INT "$pid"; done
wait "${tracers[@]}" 2>/dev/null || true
head -5 "$work/run.txt"
printf '%-12s %14s %16s %18s\n' service "fsyncs/patch" "ms in fsync/patch" "us per fsync"
for file in "$work"/strace-*.txt; do
  name=$(basename "$file" .txt | sed 's/^strace-//; s/-[0-9]*$//')
  awk -v name="$name" -v n="$n" '
    $NF == "fsync" || $NF == "fdatasync" { secs += $2; calls += $4 }
    END { if (calls == 0) { secs = 0 }
          printf "%-12s %14.2f %16.2f %18.0f\n", name, calls / n, secs * 1000 / n, (calls ? secs * 1e6 / calls : 0) }' "$file"
done
