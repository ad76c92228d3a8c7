#!/usr/bin/env bash
# Quick CPU-per-request probe: one proxy at a time, pinned to core 1 beside
# the nginx model backends, wrk on core 0 (the harness's layout), reading the
# proxy's utime+stime from /proc. Faster than the full harness (about 15 s a
# target), for iterating on the hot path; the harness stays the judge.
#   benches/cpu.sh [cohort|nginx|floor]...  # default: nginx cohort
# floor is benches/floor.rs, a proxy that only relays (no routing, headers or
# log): the cost any user-space proxy starts from on this machine.
#   SECS=8 BENCH_USERS=100000 PERF=1 benches/cpu.sh cohort   # PERF=1: perf record -g
set -euo pipefail
. "$(dirname "$0")/lib.sh"
secs=${SECS:-8}
users=${BENCH_USERS:-100000}
targets=${*:-nginx cohort}
build_release
new_run_dir
start_backends "$dir"
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # $1 = name, $2 = port, $3 = pid of the process doing the work
  BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d2s -s "$harness/lua/predict.lua" "http://127.0.0.1:$2" > /dev/null
  local t0 t1 out reqs
  t0=$(cpu_ticks "$3")
  if [ "${PERF:-0}" = 1 ]; then
    perf record -F ${PERF_HZ:-4000} ${PERF_CG:--g} -p "$3" -o "${PERF_OUT:-$dir}/$1.perf" -- sleep "$secs" 2> /dev/null &
    perf_pid=$!
  fi
  out=$(BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d"${secs}s" -s "$harness/lua/predict.lua" "http://127.0.0.1:$2" | grep BENCH_RESULT)
  t1=$(cpu_ticks "$3")
  [ -z "${perf_pid:-}" ] || wait "$perf_pid"
  reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<< "$out")
  awk -v n="$1" -v r="$reqs" -v s="$secs" -v d=$((t1 - t0)) -v hz="$hz" -v o="$out" 'BEGIN {
    split(o, f, " "); for (i in f) { split(f[i], kv, "="); m[kv[1]] = kv[2] }
    printf "%-7s %8.0f req/s  p99 %5.2f ms  CPU %5.1f us/req\n", n, r / s, m["p99_us"] / 1000, d / hz * 1e6 / r }'
  if [ "${PERF:-0}" = 1 ]; then
    perf report -i "${PERF_OUT:-$dir}/$1.perf" --no-children --percent-limit 0.7 --stdio -g none 2> /dev/null | grep -v '^#' | grep -v '^$' | head -40
  fi
}
for t in $targets; do
  case "$t" in
    nginx)
      mkdir -p "$dir/logs" "$dir/tmp"
      sed 's/access_log logs/access_log logs/' "$harness/conf/nginx-split.conf" > "$dir/nginx-split.conf"
      taskset -c 1 nginx -p "$dir/" -c "$dir/nginx-split.conf" -e "$dir/logs/split.log" &
      sleep 0.5
      measure nginx 8081 "$(pgrep -P "$(cat "$dir/proxy.pid")" | head -1)"
      kill "$(cat "$dir/proxy.pid")"
      ;;
    cohort)
      bench_config "$dir/cohort.yaml" 8090
      if [ "$users" -gt 0 ]; then (cd "$dir" && "$seed" cohort.yaml "$users" >&2); fi
      (cd "$dir" && exec taskset -c 1 "$root/target/release/cohort" --config cohort.yaml 2> cohort.err) &
      echo $! > "$dir/cohort.pid"
      until grep -q "listening on" "$dir/cohort.err"; do sleep 0.05; done
      measure cohort 8090 "$(cat "$dir/cohort.pid")"
      ;;
    floor)
      (taskset -c 1 "$(bench_binary floor)" 127.0.0.1:8092 127.0.0.1:9001 2> "$dir/floor.err") &
      floor_pid=$!
      until grep -q "listening on" "$dir/floor.err"; do sleep 0.05; done
      measure floor 8092 "$floor_pid"
      kill "$floor_pid"
      ;;
    *) echo "targets: nginx cohort floor" >&2; exit 64 ;;
  esac
done
