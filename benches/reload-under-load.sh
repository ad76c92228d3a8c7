#!/usr/bin/env bash
# Latency and errors while the config is reloaded under full load, against
# the same load with no reload. Two phases of wrk (64 connections, 1M users
# pre-seeded): steady, then one config rewrite every 500 ms, alternating a
# weights ramp (a new epoch each time) and a routing-only change.
# Needs nginx (backends) and wrk; uses the shared harness's wrk script.
#   benches/reload-under-load.sh [seconds per phase]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
secs=${1:-10}
users=${BENCH_USERS:-1000000}
build_release
new_run_dir
start_backends "$dir"
conf() { # $1 = old weight, $2 = new weight, $3 = old upstream port
cat <<YAML
listen: 127.0.0.1:8090
store: { path: ./data }
access_log: { path: ./access.jsonl }
runtime: { worker_threads: 1 }
upstreams:
  old: { url: http://127.0.0.1:$3 }
  new: { url: http://127.0.0.1:9002 }
  spare: { url: http://127.0.0.1:9001 }
experiments:
  - name: bench
    routes: [/predict]
    salt: bench
    variants:
      - { name: old, upstream: ${4:-old}, weight: $1 }
      - { name: new, upstream: new, weight: $2 }
YAML
}
conf 50 50 9001 > "$dir/cohort.yaml"
"$seed" "$dir/cohort.yaml" "$users" >&2
(cd "$dir" && exec taskset -c 1 "$root/target/release/cohort" --config cohort.yaml 2> cohort.err) &
echo $! > "$dir/cohort.pid"
until grep -q "listening on" "$dir/cohort.err"; do sleep 0.05; done
run() { BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d"$1"s -s "$harness/lua/predict.lua" http://127.0.0.1:8090 | grep BENCH_RESULT; }
run 2 > /dev/null
echo "steady:    $(run "$secs")"
(
  i=0; end=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    if [ $((i % 2)) -eq 0 ]; then conf $((40 + i % 20)) $((60 - i % 20)) 9001 > "$dir/next.yaml"
    else conf $((40 + (i - 1) % 20)) $((60 - (i - 1) % 20)) 9001 spare > "$dir/next.yaml"; fi
    mv "$dir/next.yaml" "$dir/cohort.yaml"
    sleep 0.5
  done
) &
writer=$!
echo "reloading: $(run "$secs")"
wait "$writer" || true
sleep 0.5
echo "reloads applied: $(grep -c 'config reloaded' "$dir/cohort.err"), rejected: $(grep -c 'ERROR' "$dir/cohort.err" || true)"
