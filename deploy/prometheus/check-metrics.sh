#!/usr/bin/env bash
# Lints the Prometheus exposition of running services with `promtool check metrics`.
# Usage: deploy/prometheus/check-metrics.sh URL...   e.g. http://127.0.0.1:8081/metrics
# Exit 0 when every URL answers and promtool finds no problem; otherwise prints each problem and
# exits 1. Needs promtool (Debian package `prometheus`) and curl or python3; no Rust.
set -euo pipefail

command -v promtool >/dev/null 2>&1 || { echo "check-metrics: promtool not found (apt-get install prometheus)" >&2; exit 2; }
(($#)) || { echo "usage: $0 URL..." >&2; exit 2; }

fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 10 "$1"
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"
  fi
}

failed=0
for url in "$@"; do
  if ! body=$(fetch "$url"); then
    echo "check-metrics: FAIL $url: cannot fetch" >&2
    failed=1
    continue
  fi
  families=$(grep -c '^# TYPE ' <<<"$body" || true)
  if problems=$(promtool check metrics <<<"$body" 2>&1); then
    echo "check-metrics: ok $url ($families metric families)"
  else
    echo "check-metrics: FAIL $url ($families metric families):" >&2
    while IFS= read -r line; do printf '  %s\n' "$line"; done <<<"$problems" >&2
    failed=1
  fi
done
exit "$failed"
