#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that,
# unlike req/s or CPU time, does not move with the VM's noise, so two
# builds can be compared on a busy machine. Returning units (10,000 seeded),
# one worker, the harness's model backends, wrk with 8 connections.
#
#   apt-get install -y valgrind nginx wrk
#   benches/instructions.sh                       # this tree's release build
#   benches/instructions.sh OLD_BIN NEW_BIN ...   # each binary in turn
#
# Notes: callgrind hides the CPU's SHA extensions, so SHA-256 (two per
# request) runs in software and weighs ~25% here, far more than on the
# real CPU; compare builds, not absolute costs. Kernel work (syscalls) is
# not counted: about half of a request's CPU time on this VM. Set
# KEEP_PROFILE=DIR to keep each callgrind.out for callgrind_annotate.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
for t in valgrind callgrind_control nginx wrk; do
  command -v $t >/dev/null || { echo "instructions.sh needs $t" >&2; exit 1; }
done
if [ $# -eq 0 ]; then
  build_release
  set -- "$root/target/release/cohort"
else
  seed=$(bench_binary seed)
fi
DUR=${DURATION:-8}
run=$(mktemp -d /tmp/cohort-instr.XXXX)
trap 'pkill -f "nginx -p $run/" 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run"' EXIT
start_backends "$run"
export BENCH_USERS=10000
i=0
for bin in "$@"; do
  i=$((i + 1)); d=$run/c$i; mkdir -p "$d"
  bin=$(readlink -f "$bin")
  (cd "$d" && bench_config cohort.yaml 18290 && "$seed" cohort.yaml 10000 >/dev/null)
  (cd "$d" && exec valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$bin" --config cohort.yaml >"$d/log" 2>&1) &
  vp=$!
  up=0
  for _ in $(seq 300); do curl -s -o /dev/null localhost:18290/predict -H 'x-user-id: user-1' && { up=1; break; }; sleep 0.3; done
  [ $up = 1 ] || { echo "$bin did not answer under valgrind:" >&2; tail -5 "$d/log" >&2; exit 1; }
  wrk -t1 -c8 -d2s -s "$harness/lua/predict.lua" http://127.0.0.1:18290/predict >/dev/null 2>&1
  callgrind_control -z $vp >/dev/null
  out=$(wrk -t1 -c8 -d${DUR}s -s "$harness/lua/predict.lua" http://127.0.0.1:18290/predict 2>&1)
  callgrind_control -d $vp >/dev/null
  sleep 1
  n=$(echo "$out" | grep -o '[0-9]* requests in' | cut -d' ' -f1)
  f=$(ls -t "$d"/cg.out* | head -1)
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$f")
  echo "$bin: $n requests, $((total / n)) instructions per request"
  [ -z "${KEEP_PROFILE:-}" ] || { mkdir -p "$KEEP_PROFILE"; cp "$f" "$KEEP_PROFILE/callgrind.out.$i"; }
  kill $vp; wait $vp 2>/dev/null || true
done
