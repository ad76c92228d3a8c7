#!/usr/bin/env bash
# The first minutes of an experiment, as a curve over time: cohort starts on
# an empty store and BENCH_USERS users (default 1M) arrive at random, so
# nearly every early request is a first exposure and the share falls as the
# store fills. Intervals of INTERVAL seconds alternate between cohort and
# NGINX split_clients (the same wrk load, the same pinned cores as the
# shared harness: load on core 0, proxy and backends on core 1), and each
# pair prints one line:
#
#   t_s  cohort_rps  nginx_rps  ratio  cohort_p99_us  nginx_p99_us  first_exposure_share
#   syncs_over_10ms  slowest_sync_le
#
# The last two come from cohort_store_sync_duration_seconds: the journal
# syncs of the interval that took over 10 ms, and the slowest sync's
# bucket so far (its upper bound, in seconds).
#
# t_s counts cohort's serving time only (its store fills only while it
# serves); the share is the interval's first exposures over its requests,
# from cohort's /metrics. Needs: apt-get install -y nginx wrk
#
#   benches/mixed.sh                       # 12 intervals of 5 s
#   INTERVALS=24 INTERVAL=5 CONNS=64 BENCH_USERS=1000000 benches/mixed.sh
#   MIXED_ACCESS_LOG=/dev/shm/access.jsonl benches/mixed.sh   # the log off the disk (~1.3 GB a minute)
#   BENCH_DURABILITY=write benches/mixed.sh   # store.durability: write
set -euo pipefail
. "$(dirname "$0")/lib.sh"
INTERVALS=${INTERVALS:-12} INTERVAL=${INTERVAL:-5} CONNS=${CONNS:-64}
export BENCH_USERS=${BENCH_USERS:-1000000}
cargo build --release --manifest-path "$root/Cargo.toml" >&2
new_run_dir
start_backends "$dir"
echo $! > "$dir/backends.pid"
cp "$harness/conf/nginx-split.conf" "$dir/"
taskset -c 1 nginx -p "$dir/" -c "$dir/nginx-split.conf" -e "$dir/logs/split.log" &
nginx_pid=$!
echo "bench-token-$RANDOM$RANDOM" > "$dir/token"
BENCH_STORE="{ path: $dir/data${BENCH_DURABILITY:+, durability: $BENCH_DURABILITY} }" BENCH_ACCESS_LOG=${MIXED_ACCESS_LOG:-$dir/access.jsonl} \
  BENCH_EXTRA="admin: { listen: 127.0.0.1:18099, token_file: $dir/token }" \
  bench_config "$dir/cohort.yaml" 18090
(cd "$dir" && exec taskset -c 1 "$root/target/release/cohort" --config "$dir/cohort.yaml") >"$dir/cohort.out" 2>&1 &
echo $! > "$dir/cohort.pid"
trap 'kill $nginx_pid 2>/dev/null; for p in "$dir"/cohort.pid "$dir"/backends.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; sleep 0.3; rm -rf "$dir"' EXIT
for port in 18090 8081; do
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/predict" -H 'x-user-id: probe' && break; sleep 0.1; done
done

# Sum of a counter family on cohort's /metrics (experiment bench only).
counter() {
  curl -s 127.0.0.1:18099/metrics | awk -v m="$1" '$1 ~ "^"m"\\{" && $1 ~ /experiment="bench"/ {s += $2} END {printf "%d\n", s}'
}
# Journal syncs so far that took over 10 ms, and the longest bucket hit
# (cohort_store_sync_duration_seconds): "slow max_le".
slow_syncs() {
  curl -s 127.0.0.1:18099/metrics | awk '
    /^cohort_store_sync_duration_seconds_bucket/ { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      if (le == "0.01") at10 = $2; if ($2 > last) { max = le; last = $2 } }
    /^cohort_store_sync_duration_seconds_count/ { n = $2 }
    END { printf "%d %s\n", n - at10, max }'
}
# One wrk interval against a port: prints "rps p99_us".
load() {
  taskset -c 0 wrk -t2 -c"$CONNS" -d"${INTERVAL}s" --timeout 5s -s "$harness/lua/predict.lua" \
    "http://127.0.0.1:$1/predict" 2>&1 | sed -n 's/.*rps=\([0-9.]*\).*p99_us=\([0-9]*\).*/\1 \2/p'
}
printf "t_s\tcohort_rps\tnginx_rps\tratio\tcohort_p99_us\tnginx_p99_us\tfirst_exposure_share\tsyncs_over_10ms\tslowest_sync_le\n"
req0=$(counter cohort_requests_total) new0=$(counter cohort_first_exposures_total)
read -r slow0 _ < <(slow_syncs)
for i in $(seq "$INTERVALS"); do
  read -r c_rps c_p99 < <(load 18090)
  req1=$(counter cohort_requests_total) new1=$(counter cohort_first_exposures_total)
  read -r slow1 slowest < <(slow_syncs)
  read -r n_rps n_p99 < <(load 8081)
  python3 -c "import sys
t,c,n,cp,np,dr,dn,ds,sl=sys.argv[1:]
print(f'{t}\t{float(c):.0f}\t{float(n):.0f}\t{float(c)/float(n):.2f}\t{cp}\t{np}\t{int(dn)/max(1,int(dr)):.3f}\t{ds}\t{sl}')" \
    $((i * INTERVAL)) "$c_rps" "$n_rps" "$c_p99" "$n_p99" $((req1 - req0)) $((new1 - new0)) $((slow1 - slow0)) "$slowest"
  req0=$req1 new0=$new1 slow0=$slow1
done
