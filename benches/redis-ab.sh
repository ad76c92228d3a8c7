#!/usr/bin/env bash
# Quick A/B: embedded vs redis store, returning vs new units, one replica.
set -u
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
