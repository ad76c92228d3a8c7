#!/usr/bin/env bash
# Latency and errors while the config is reloaded under full load, against
# the same load with no reload. Two phases of wrk (64 connections, 1M users
# pre-seeded): steady, then one config rewrite every 500 ms, alternating a
# weights ramp (a new epoch each time) and a routing-only change.
# Needs nginx (backends) and wrk; uses the shared harness's wrk script.
#   benches/reload-under-load.sh [seconds per phase]
# RELOAD_KIND=weights or routing keeps to one kind of change (default: both).
# BENCH_ACCESS_LOG=/dev/null (or a tmpfs path) moves the access log off the disk.
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
access_log: { path: ${BENCH_ACCESS_LOG:-./access.jsonl} }
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
# GEN=loadgen uses benches/loadgen.rs instead of wrk: it keeps each request's
# start time, so each phase also reports its worst 100 ms window, and the
# reload phase how the windows with a reload in them compare.
if [ "${GEN:-wrk}" = loadgen ]; then
  loadgen=$(bench_binary loadgen)
  run() { BENCH_USERS=$users LOADGEN_CSV="$dir/windows-$2.csv" taskset -c 0 "$loadgen" 127.0.0.1:8090 "$1" 64 2; }
else
  run() { BENCH_USERS=$users taskset -c 0 wrk -t2 -c64 -d"$1"s -s "$harness/lua/predict.lua" http://127.0.0.1:8090 | grep BENCH_RESULT; }
fi
run 2 warm > /dev/null
echo "steady:    $(run "$secs" steady)"
(
  i=0; end=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    case ${RELOAD_KIND:-both} in
      weights) conf $((40 + i % 20)) $((60 - i % 20)) 9001 ;;
      routing) conf 50 50 9001 "$([ $((i % 2)) -eq 0 ] && echo old || echo spare)" ;;
      *) if [ $((i % 2)) -eq 0 ]; then conf $((40 + i % 20)) $((60 - i % 20)) 9001
         else conf $((40 + (i - 1) % 20)) $((60 - (i - 1) % 20)) 9001 spare; fi ;;
    esac > "$dir/next.yaml"
    mv "$dir/next.yaml" "$dir/cohort.yaml"
    sleep 0.5
  done
) &
writer=$!
echo "reloading: $(run "$secs" reloading)"
wait "$writer" || true
sleep 0.5
echo "reloads applied: $(grep -c 'config reloaded' "$dir/cohort.err"), rejected: $(grep -c 'ERROR' "$dir/cohort.err" || true)"
if [ "${GEN:-wrk}" = loadgen ]; then
  # Windows that saw a reload applied (logged right after the swap), and the
  # one after each, against every other window of the same phase.
  python3 - "$dir/cohort.err" "$dir/windows-reloading.csv" "$dir/windows-steady.csv" <<'PY'
import csv, datetime, re, statistics, sys
stamp = re.compile(r'^(\S+Z)\s.*config reloaded')
reloads = []
for line in open(sys.argv[1]):
    m = stamp.match(re.sub(r'\x1b\[[0-9;]*m', '', line))
    if m:
        reloads.append(datetime.datetime.fromisoformat(m.group(1).replace('Z', '+00:00')).timestamp())
def windows(path):
    rows = [r for r in csv.DictReader(open(path)) if int(r['requests']) >= 100]
    return [(float(r['unix_start']), int(r['p99_us']), int(r['max_us'])) for r in rows]
steady = windows(sys.argv[3])
rows = windows(sys.argv[2])
width = rows[1][0] - rows[0][0]
hit = {i for i, (t, _, _) in enumerate(rows) for r in reloads if t <= r < t + 2 * width}
def show(name, ws):
    if not ws:
        print(f"{name}: no windows"); return
    p99 = [w[1] for w in ws]
    print(f"{name}: {len(ws)} windows, p99 median {statistics.median(p99)} us, worst {max(p99)} us; max latency worst {max(w[2] for w in ws)} us")
show("steady windows", steady)
show("reload windows (the one with the swap and the next)", [rows[i] for i in sorted(hit)])
show("other windows of the reload phase", [w for i, w in enumerate(rows) if i not in hit])
PY
fi
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dir"/*.csv "$dir/cohort.err" "$KEEP/" 2>/dev/null || true; fi
