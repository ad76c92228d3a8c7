#!/usr/bin/env bash
# How evenly cohort's workers share the load (thread-per-core: each worker
# serves the connections it accepted, for their whole life). Starts the
# harness's model backends and cohort with BENCH_WORKERS (2) workers, then
# for each client count in CONNS ("3 8 64") runs wrk ROUNDS (5) times for
# DURATION (2) s, each time with new keep-alive connections (so each run is
# a new draw of which worker accepted which), and prints each worker
# thread's share of the CPU the workers used (from /proc; the thread names
# are cohort-worker-N). An even split is 1/N each; "worst" is the largest
# share in the run. Needs: apt-get install -y nginx wrk
#
#   benches/workers.sh [COHORT_BIN]     (default: target/release/cohort)
# BENCH_HARNESS, BENCH_OLD_UPSTREAM, BENCH_NEW_UPSTREAM: as for lib.sh (a
# harness copy whose backends.conf listens elsewhere, when 9001 is taken).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bin=${1:-$root/target/release/cohort}
workers=${BENCH_WORKERS:-2}
port=${BENCH_PORT:-8093}
old=${BENCH_OLD_UPSTREAM:-127.0.0.1:9001} new=${BENCH_NEW_UPSTREAM:-127.0.0.1:9002}
for p in "${old##*:}" "${new##*:}" "$port"; do
  if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "port $p is busy" >&2; exit 1; fi
done
new_run_dir
start_backends "$dir"
BENCH_WORKERS=$workers BENCH_STORE="{ path: $dir/data }" BENCH_ACCESS_LOG=$dir/access.jsonl \
  bench_config "$dir/cohort.yaml" "$port"
"$bin" --config "$dir/cohort.yaml" 2> "$dir/cohort.log" &
echo $! > "$dir/cohort.pid"
pid=$(cat "$dir/cohort.pid")
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

# utime+stime ticks of each worker thread, one line "name ticks".
ticks() {
  for t in /proc/"$pid"/task/*; do
    name=$(cat "$t/comm")
    case "$name" in cohort-worker-*) echo "$name $(cut -d' ' -f14,15 "$t/stat" | awk '{print $1+$2}')" ;; esac
  done | sort
}
echo "cohort with $workers workers ($bin); wrk from $(nproc) cores; shares of worker CPU"
for c in ${CONNS:-3 8 64}; do
  for r in $(seq "${ROUNDS:-5}"); do
    before=$(ticks)
    wrk -t"$(( c % 2 ? 1 : 2 ))" -c"$c" -d"${DURATION:-2}"s -s "$harness/lua/predict.lua" \
      "http://127.0.0.1:$port/predict" > /dev/null
    after=$(ticks)
    join <(echo "$before") <(echo "$after") | awk -v c="$c" -v r="$r" '
      { d[NR] = $3 - $2; n[NR] = $1; total += $3 - $2 }
      END {
        line = sprintf("conns=%-3d round=%d", c, r); worst = 0
        for (i = 1; i <= NR; i++) {
          s = total ? d[i] / total : 0; if (s > worst) worst = s
          line = line sprintf("  %s=%.2f", n[i], s)
        }
        print line sprintf("  worst=%.2f", worst)
      }'
  done
done
