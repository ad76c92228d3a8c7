#!/usr/bin/env bash
# Proxy CPU per request as the request body grows (64 B .. 1 MiB; above
# 256 KiB on hyper's path, below on the lean path), with
# 1M returning units stored; backends are the shared harness's nginx.
# Prints one line per size: req/s, p99, proxy CPU µs per request.
#   benches/body-size.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
users=${BENCH_USERS:-1000000}
build_release
new_run_dir
start_backends "$dir"
bench_config "$dir/cohort.yaml" 8090
"$seed" "$dir/cohort.yaml" "$users" >&2
(cd "$dir" && exec taskset -c 1 "$root/target/release/cohort" --config cohort.yaml 2> cohort.err) &
echo $! > "$dir/cohort.pid"
until grep -q "listening on" "$dir/cohort.err"; do sleep 0.05; done
pid=$(cat "$dir/cohort.pid")
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
for size in 64 1024 16384 65536 262144 1048576; do
  BODY_BYTES=$size BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d2s -s "$root/benches/body.lua" http://127.0.0.1:8090 > /dev/null
  t0=$(cpu)
  out=$(BODY_BYTES=$size BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d6s --latency -s "$root/benches/body.lua" http://127.0.0.1:8090)
  t1=$(cpu)
  req=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  echo "body ${size} B: req/s ${rps}, p99 ${p99}, proxy CPU $(echo "($t1 - $t0) * 10000 / $req" | bc -l | cut -c1-5) µs/req"
done
