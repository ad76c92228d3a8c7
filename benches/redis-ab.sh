#!/usr/bin/env bash
# The shared store (Redis on loopback) against the embedded store.
#
#   benches/redis-ab.sh harness [CELL...]
#     With the shared harness (../shared/bench/run.sh, REFS=nginx): one run
#     per cell, each cell a store and a traffic mix, and a table of the
#     proxy-under-test figures at the end (req/s, p99, proxy CPU µs/req,
#     light-load added p99, test/nginx ratio, degraded lines). Cells:
#       embedded-returning  redis1-returning  redis2-returning
#       embedded-new        redis1-new        redis2-new
#     (default: all six), and redis1lb-returning, redis1lb-new: one
#     replica behind the balancer the two replicas need, which prices that
#     hop. redisN runs N replicas on one redis-server
#     (benches/harness-cohort-redis.sh: two replicas sit behind an haproxy
#     TCP balancer). "returning": RETURNING_USERS ids (default 10000), all
#     pre-assigned before the proxy starts, so after the harness's warm-up
#     every request is a returning unit served from the replica's cache;
#     "new": ids drawn from 10^9, nearly every request a first assignment.
#     Shorter than a full harness run by default (ROUNDS=4 DURATION=4);
#     every harness knob passes through. Needs nginx, wrk, haproxy, redis.
#   benches/redis-ab.sh
#     The quick A/B without the harness: one replica per store, wrk on
#     fixed ports, two interleaved rounds per cell.
set -u
if [ "${1:-}" = harness ]; then
  shift
  set -eo pipefail
  . "$(dirname "$0")/lib.sh"
  [ -x "$harness/run.sh" ] || { echo "no harness at $harness (set BENCH_HARNESS)" >&2; exit 1; }
  build_release
  cells=("$@")
  [ ${#cells[@]} -gt 0 ] || cells=(embedded-returning redis1-returning redis2-returning embedded-new redis1-new redis2-new)
  export REFS=${REFS:-nginx} ROUNDS=${ROUNDS:-4} DURATION=${DURATION:-4}
  # The returning cells keep a smaller id space than the harness's 10^6, so
  # that the 2 s warm-up puts every id in a Redis replica's cache.
  ret=${RETURNING_USERS:-10000}
  out=$(mktemp -d)
  rows=()
  for cell in "${cells[@]}"; do
    case "$cell" in
      embedded-*) cmd="$root/benches/harness-cohort.sh $root/target/release/cohort $seed" ;;
      redis1-*) cmd="env REPLICAS=1 $root/benches/harness-cohort-redis.sh $root/target/release/cohort $seed" ;;
      redis2-*) cmd="env REPLICAS=2 $root/benches/harness-cohort-redis.sh $root/target/release/cohort $seed" ;;
      redis1lb-*) cmd="env REPLICAS=1 BALANCER=1 $root/benches/harness-cohort-redis.sh $root/target/release/cohort $seed" ;;
      *) echo "unknown cell $cell" >&2; exit 64 ;;
    esac
    case "$cell" in
      *-returning) users=$ret seeded=$ret ;;
      *-new) users=1000000000 seeded=0 ;;
      *) echo "unknown cell $cell" >&2; exit 64 ;;
    esac
    echo "== $cell" >&2
    rc=0
    SEED_USERS=$seeded BENCH_USERS=$users PROXY_START_TIMEOUT=${PROXY_START_TIMEOUT:-90} \
      "$harness/run.sh" "$cmd" 8090 > "$out/$cell.txt" 2>&1 || rc=$?
    sat=$(grep -F '| (c) proxy under test |' "$out/$cell.txt" | head -1 || true)
    lat=$(grep -F '| (c) proxy under test |' "$out/$cell.txt" | sed -n 2p || true)
    ratio=$(grep '^RATIO test/nginx' "$out/$cell.txt" | tail -1 || true)
    res=$(sed -n 's/.*results in //p' "$out/$cell.txt" | tail -1)
    degraded=$( (grep -ho 'store_degraded [0-9]*' "$res/proxy-under-test.log.tail" 2>/dev/null || true) | awk '{s+=$2} END {print s+0}')
    col() { echo "$1" | awk -F'|' -v c="$2" '{gsub(/ /, "", $c); print $c}'; }
    rows+=("$(printf '%-20s %10s %9s %12s %12s %s degraded=%s rc=%s' "$cell" \
      "$(col "$sat" 3)" "$(col "$sat" 6)" "$(col "$sat" 9)" "$(col "$lat" 10)" \
      "${ratio#RATIO }" "${degraded:-?}" "$rc")")
    echo "${rows[-1]}" >&2
  done
  echo
  printf '%-20s %10s %9s %12s %12s %s\n' cell "req/s" "p99 ms" "CPU us/req" "lat +p99 ms" "ratio (test/nginx)"
  printf '%s\n' "${rows[@]}"
  echo "full outputs: $out"
  exit 0
fi
# The quick A/B: embedded vs redis store, returning vs new units, one replica.
BIN=${BIN:-./target/release/cohort}
LUA=${LUA:-../shared/bench/lua/predict.lua}
W=$(mktemp -d); BIN=$(realpath $BIN); LUA=$(realpath $LUA); cd $W
rm -rf emb-data bk-data rdata *.jsonl; mkdir -p rdata
redis-server --port 47100 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir $W/rdata >/dev/null 2>&1 &
RPID=$!
sleep 0.5
mk() { # name store listen
cat > $1.yaml <<Y
listen: $3
store: $2
access_log: { path: ./$1.jsonl }
upstreams:
  old: { url: http://127.0.0.1:19001 }
  new: { url: http://127.0.0.1:19002 }
experiments:
  - name: ranker
    routes: [/predict]
    unit_header: x-user-id
    salt: s
    variants:
      - { name: control, upstream: old, weight: 50 }
      - { name: treatment, upstream: new, weight: 50 }
Y
}
mk emb "{ path: ./emb-data }" 127.0.0.1:18080
mk red "{ kind: redis, url: 'redis://127.0.0.1:47100/0', key_prefix: b, timeout: 1s }" 127.0.0.1:18081
mk bk "{ path: ./bk-data }" 127.0.0.1:18079
$BIN demo --config bk.yaml >/dev/null 2>bk.err &
BPID=$!
sleep 1
$BIN --config emb.yaml >/dev/null 2>emb.err &
EPID=$!
sleep 1
# the redis proxy alone (the demo backends already run on 19001/19002)
$BIN --config red.yaml >/dev/null 2>red.err &
RDPID=$!
sleep 1
w() { # port users label
  out=$(BENCH_USERS=$2 wrk -t2 -c32 -d${D:-5}s --latency -s $LUA http://127.0.0.1:$1 2>&1)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$3 rps=$rps p99=$p99"
}
# Warm returning users (1000 ids) on both.
BENCH_USERS=1000 wrk -t1 -c8 -d2s -s $LUA http://127.0.0.1:18080 >/dev/null 2>&1
BENCH_USERS=1000 wrk -t1 -c8 -d2s -s $LUA http://127.0.0.1:18081 >/dev/null 2>&1
for round in 1 2; do
  w 18080 1000 "r$round embedded returning"
  w 18081 1000 "r$round redis    returning"
  w 18080 1000000000 "r$round embedded new"
  w 18081 1000000000 "r$round redis    new"
done
kill $RDPID $EPID $BPID; sleep 0.5; kill $RPID
wait 2>/dev/null
grep -c . emb.jsonl red.jsonl 2>/dev/null
grep -i "degraded\|unavailable" red.err | head -3
