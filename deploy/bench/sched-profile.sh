#!/usr/bin/env bash
# Where a patch's time goes besides fsync: runs ghost-bench at a fixed rate, records the
# scheduler (`perf sched record -a`) for SECONDS in the middle of the run, and prints per
# service, per patch: how many times its threads ran (a run starts with a wake-up: a hop
# between threads or processes, a return from a blocking fsync; or, rarely, after a
# preemption), the mean delay from becoming runnable to running, and the CPU time.
# Loopback only; perf stops on its own; the benchmark and its services are stopped by PID.
#
# Usage: deploy/bench/sched-profile.sh [RATE=50] [SECONDS=5]   (release binaries in $BIN_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release}
rate=${1:-50}
seconds=${2:-5}
for value in "$rate" "$seconds"; do
  [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "sched-profile: RATE and SECONDS must be whole numbers above 0, not '$value'" >&2; exit 2; }
done
command -v perf >/dev/null || { echo "perf is missing (Debian: linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
bench=""
cleanup() {
  # ghost-bench, started in the background, ignores SIGINT: TERM its services, then it.
  if [ -n "$bench" ] && kill -0 "$bench" 2>/dev/null; then
    for pid in $(ps -o pid= --ppid "$bench"); do kill -TERM "$pid" 2>/dev/null || true; done
    kill -TERM "$bench" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

duration=$((seconds + 10))
"$bin/ghost-bench" --rate "$rate" --duration "${duration}s" -t 8 --fsync-samples 200 >"$work/bench.txt" 2>&1 &
bench=$!
sleep 5
# pid -> service name (the children of ghost-bench, started by now).
ps -o pid=,args= --ppid "$bench" | awk '{ n = split($2, p, "/"); print $1, p[n] }' >"$work/names"
perf sched record -a -o "$work/sched.data" -- sleep "$seconds" >"$work/perf.log" 2>&1 ||
  { cat "$work/perf.log" >&2; exit 1; }
wait "$bench" || true
bench=""
sed -n '1,4p' "$work/bench.txt"
grep -E '^(e2e submit → ended|event )' "$work/bench.txt" || true
perf sched timehist -i "$work/sched.data" 2>/dev/null |
  awk -v names="$work/names" -v patches="$((rate * seconds))" '
    BEGIN { while ((getline line < names) > 0) { split(line, f, " "); name[f[1]] = f[2] } }
    # time cpu task[tid/pid] (task[pid] for a main thread; perf may cut the "]") wait sch-delay run
    NF >= 6 && $3 ~ /\[[0-9]+(\/[0-9]+)?\]?$/ {
      match($3, /[0-9]+\]?$/); pid = substr($3, RSTART, RLENGTH); sub(/\]$/, "", pid)
      if (!(pid in name)) next
      svc = name[pid]; sub(/-[0-9]+$/, "", svc)
      count[svc]++; delay[svc] += $5; run[svc] += $6
    }
    END {
      if (!length(count)) { print "no scheduler events of the services were recorded" > "/dev/stderr"; exit 1 }
      printf "%-12s %18s %20s %16s\n", "service", "runs/patch", "mean sch delay us", "CPU ms/patch"
      for (s in count) {
        printf "%-12s %18.1f %20.1f %16.3f\n", s, count[s] / patches, delay[s] * 1000 / count[s], run[s] / patches
        tc += count[s]; td += delay[s]; tr += run[s]
      }
      printf "%-12s %18.1f %20.1f %16.3f\n", "all", tc / patches, td * 1000 / tc, tr / patches
    }'
