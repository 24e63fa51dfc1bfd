#!/usr/bin/env bash
# The end-to-end latency on a slower disk: builds deploy/bench/slow-fsync.c (an LD_PRELOAD
# library that makes every fsync/fdatasync wait DELAY_US more) and runs ghost-bench with it
# preloaded into itself and the five services it starts, so its fsync floor probe and the
# patches' path meet the same disk. Issue 10's targets were set on a disk of ~4 ms per fsync.
#
# Usage: deploy/bench/slow-disk.sh [DELAY_US=4000] [ghost-bench args; default --rate 50 --duration 20s -t 8]
# Env:   BIN_DIR (release binaries; default $CARGO_TARGET_DIR/release or target/release)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}
delay=${1:-4000}
[[ $delay =~ ^[0-9]+$ ]] || { echo "slow-disk: DELAY_US must be a whole number of microseconds, not '$delay'" >&2; exit 2; }
shift || true
args=("$@")
((${#args[@]})) || args=(--rate 50 --duration 20s -t 8)
[ -x "$bin/ghost-bench" ] || { echo "missing $bin/ghost-bench: build the release binaries first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -Wall -shared -fPIC -o "$work/slow-fsync.so" deploy/bench/slow-fsync.c -ldl
echo "slow-disk: every fsync/fdatasync + ${delay} us (LD_PRELOAD $work/slow-fsync.so)"
LD_PRELOAD="$work/slow-fsync.so" GHOST_FSYNC_DELAY_US="$delay" "$bin/ghost-bench" "${args[@]}"
