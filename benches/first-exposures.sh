#!/usr/bin/env bash
# Where a first exposure's cost goes: one cohort build at a time, pinned to
# core 1 beside the model backends, wrk -t2 -c64 on core 0 (the harness's
# layout), every request a new unit (ids drawn from 1e9) or, with
# USERS=10000, returning units. Per request it prints req/s and p99, CPU
# per thread from /proc/PID/task/*/schedstat (time on CPU, run-queue wait,
# slices), core 1's idle share and, with perf, syscalls and context
# switches from tracepoints (no strace slowdown).
#   benches/first-exposures.sh BIN [BIN...]        # each BIN a cohort binary
#   USERS=10000 SECS=8 PERF=0 benches/first-exposures.sh target/release/cohort
# The harness (benches/e2e.sh new) stays the judge against NGINX; this is
# for counting what changed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
secs=${SECS:-8}
users=${USERS:-1000000000}
new_run_dir
start_backends "$dir"
hz=$(getconf CLK_TCK)
events=raw_syscalls:sys_enter,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,context-switches
wrk_run() { # $1 = seconds; prints the BENCH_RESULT line
  BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d"$1s" --latency -s "$harness/lua/predict.lua" \
    http://127.0.0.1:18190/predict | grep BENCH_RESULT || true
}
threads() { for t in /proc/$1/task/*; do echo "$(cat "$t/comm") $(cat "$t/schedstat")"; done; }
idle1() { awk '$1 == "cpu1" {print $5 + $6}' /proc/stat; }
for bin in "$@"; do
  bin=$(readlink -f "$bin")
  run="$dir/$(basename "$bin")"
  mkdir -p "$run"
  BENCH_STORE="{ path: $run/data }" BENCH_ACCESS_LOG=$run/access.jsonl bench_config "$run/cohort.yaml" 18190
  (cd "$run" && exec taskset -c 1 "$bin" --config cohort.yaml > "$run/out" 2>&1) &
  pid=$!
  echo "$pid" > "$dir/cohort.pid"
  for _ in $(seq 100); do curl -s -o /dev/null -H 'x-user-id: warm' localhost:18190/predict && break; sleep 0.2; done
  wrk_run 2 > /dev/null
  threads "$pid" > "$run/t0"
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat") i0=$(idle1)
  if [ "${PERF:-1}" = 1 ]; then
    perf stat -x, -e "$events" -p "$pid" -o "$run/perf.txt" &
    perf_pid=$!
  fi
  res=$(wrk_run "$secs")
  [ -z "${perf_pid:-}" ] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat") i1=$(idle1)
  threads "$pid" > "$run/t1"
  n=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<< "$res")
  echo "== $bin (users $users, load average $(cut -d' ' -f1 /proc/loadavg))"
  echo "$res" | grep -o 'rps=[0-9.]* p50_us=[0-9]* p90_us=[0-9]* p99_us=[0-9]*'
  awk -v a="$c0" -v b="$c1" -v hz="$hz" -v n="$n" -v i0="$i0" -v i1="$i1" -v s="$secs" \
    'BEGIN {printf "process CPU %.2f us/req; core 1 idle %.1f%%\n", (b - a) * 1e6 / hz / n, (i1 - i0) / s}'
  paste "$run/t0" "$run/t1" | awk -v n="$n" '$6 > $2 {printf "  thread %-14s CPU %.2f us/req, run-queue wait %.2f us/req, slices %.3f/req\n", $1, ($6 - $2) / n / 1000, ($7 - $3) / n / 1000, ($8 - $4) / n}'
  [ ! -f "$run/perf.txt" ] || awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ {printf "  %-32s %.3f/req\n", $3, $1 / n}' "$run/perf.txt"
  kill "$pid"
  wait "$pid" 2> /dev/null || true
  rm "$dir/cohort.pid"
  unset perf_pid
done
