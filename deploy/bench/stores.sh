#!/usr/bin/env bash
# SQLite against PostgreSQL, same binaries, same machine, alternating: ROUNDS times
# (SQLite, then PostgreSQL), each store's run being
#   1. durable intake at 8 and 64 connections (compare.sh, gateway only: SERVERS=gateway),
#   2. ghost-bench --rate 500 --duration 60s -t 8 --timeout 240s,
#   3. ghost-bench --rate 50 --duration 20s -t 8,
# with the load average printed before each. PostgreSQL is a throwaway server per run
# (ghost-bench --store postgres: initdb + pg_ctl in a temp dir, fsync on, loopback), stopped
# by ghost-bench when its run ends. Every report is kept as JSON under OUT.
#
# Usage: deploy/bench/stores.sh     (after the release build of ghost-bench and the services)
# Env:   BIN_DIR (target/release), ROUNDS (2), OUT (a new temp dir), SKIP ("": any of
#        intake rate500 rate50 to leave out).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}
rounds=${ROUNDS:-2}
out=${OUT:-$(mktemp -d -t ghost-stores-XXXXXX)}
skip=${SKIP:-}
mkdir -p "$out"
echo "stores.sh: $rounds rounds, reports in $out, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

wants() { case " $skip " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }
load() { echo "[$(date -u +%H:%M:%S)] load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }

for round in $(seq "$rounds"); do
  for store in sqlite postgres; do
    tag="$store-$round"
    if wants intake; then
      load "$tag intake"
      STORE=$store SERVERS=gateway BIN_DIR=$bin deploy/bench/compare.sh 2>&1 | tee "$out/intake-$tag.txt"
    fi
    if wants rate500; then
      load "$tag 500/s"
      "$bin/ghost-bench" --store "$store" --rate 500 --duration 60s -t 8 --timeout 240s \
        --json "$out/rate500-$tag.json" | tee "$out/rate500-$tag.txt"
    fi
    if wants rate50; then
      load "$tag 50/s"
      "$bin/ghost-bench" --store "$store" --rate 50 --duration 20s -t 8 \
        --json "$out/rate50-$tag.json" | tee "$out/rate50-$tag.txt"
    fi
  done
done
load "done; reports in $out"
