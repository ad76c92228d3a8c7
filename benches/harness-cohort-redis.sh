#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/run.sh on the shared store: starts, in the
# harness's process group (so their CPU counts as the proxy's, they run on
# the proxy's pinned core and the harness stops them), a redis-server on
# loopback (AOF, appendfsync always: as durable as the embedded journal)
# and REPLICAS cohort replicas on it, each on one worker thread.
#   REPLICAS=1: the replica listens on BENCH_PORT.
#   REPLICAS=2: the replicas listen on BENCH_PORT+1 and +2 behind an
#     haproxy TCP balancer on BENCH_PORT (mode tcp, round robin per
#     connection: wrk's keep-alive connections split evenly, and a unit
#     meets both replicas). Its CPU counts as the proxy's too.
#   BALANCER=1 puts that balancer in front of one replica too (on
#     BENCH_PORT+1): the control that prices the balancer's hop.
# SEED_USERS > 0 pre-assigns user-1 ..= user-N in Redis first (through the
# real assignment path, like harness-cohort.sh does for the embedded store).
# STORE_TIMEOUT is store.timeout (default 1s, so a saturated machine does
# not turn the measurement into one of degraded mode); on SIGTERM the
# script prints how many access-log lines were served degraded.
#   harness-cohort-redis.sh COHORT_BIN [SEED_BIN]
set -euo pipefail
BIN=${1:?path to the cohort binary}
SEED=${2:-}
REPLICAS=${REPLICAS:-1}
dir=${BENCH_RUN_DIR:-$(mktemp -d)}/cohort-redis
mkdir -p "$dir/redis"
rport=$((BENCH_PORT + 100))
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly yes \
  --appendfsync always --dir "$dir/redis" >"$dir/redis.log" 2>&1 &
for _ in $(seq 200); do
  [ "$(redis-cli -p "$rport" PING 2>/dev/null)" = PONG ] && break
  sleep 0.05
done

# conf FILE PORT: a replica's config (lib.sh's bench config, on Redis).
. "$(dirname "$0")/lib.sh"
conf() {
  BENCH_STORE="{ kind: redis, url: 'redis://127.0.0.1:$rport/0', key_prefix: bench, timeout: ${STORE_TIMEOUT:-1s} }" \
    BENCH_ACCESS_LOG=$dir/access-$2.jsonl bench_config "$1" "$2"
}

balancer=${BALANCER:-0}
[ "$REPLICAS" = 1 ] || balancer=1
if [ "$balancer" = 0 ]; then ports=("$BENCH_PORT"); else ports=($(seq $((BENCH_PORT + 1)) $((BENCH_PORT + REPLICAS)))); fi
for p in "${ports[@]}"; do conf "$dir/replica-$p.yaml" "$p"; done
if [ -n "$SEED" ] && [ "${SEED_USERS:-0}" -gt 0 ]; then
  "$SEED" "$dir/replica-${ports[0]}.yaml" "$SEED_USERS" >&2
fi
pids=()
cd "$dir"
for p in "${ports[@]}"; do
  "$BIN" --config "$dir/replica-$p.yaml" &
  pids+=($!)
done
if [ "$balancer" = 1 ]; then
  # The balancer opens the harness's port only once both replicas listen.
  for p in "${ports[@]}"; do
    for _ in $(seq 400); do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
      sleep 0.05
    done
  done
  cat > "$dir/balancer.cfg" <<CFG
global
  nbthread 1
defaults
  mode tcp
  timeout connect 1s
  timeout client 75s
  timeout server 75s
frontend replicas
  bind 127.0.0.1:${BENCH_PORT}
  default_backend replicas
backend replicas
  balance roundrobin
CFG
  for p in "${ports[@]}"; do echo "  server r$p 127.0.0.1:$p" >> "$dir/balancer.cfg"; done
  haproxy -db -f "$dir/balancer.cfg" &
  pids+=($!)
fi

report() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  for p in "${ports[@]}"; do
    f="$dir/access-$p.jsonl"
    echo "replica :$p access-log lines $(wc -l < "$f"), store_degraded $(grep -c '"store_degraded":true' "$f" || true)" >&2
  done
  exit 0
}
trap report TERM INT
wait
