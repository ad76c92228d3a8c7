#!/usr/bin/env bash
# End-to-end throughput and latency: cohort vs NGINX split_clients (and
# HAProxy) vs direct to the backend, on loopback, with the shared harness
# (wrk, interleaved rounds, medians, ratios). Needs:
#   apt-get install -y nginx wrk haproxy
#
#   benches/e2e.sh returning     # store pre-seeded with all 1M users (default)
#   benches/e2e.sh new           # every request a new unit (1e9 user ids)
#   benches/e2e.sh mixed         # empty store, 1M users: new units turning into returning ones
#   REFS=nginx benches/e2e.sh    # nginx reference only (shorter)
#   REPEAT=3 benches/e2e.sh      # median of 3 runs
#   BENCH_DURABILITY=write benches/e2e.sh new   # store.durability: write
#
# BENCH_HARNESS points at the harness (default ../shared/bench).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ -x "$harness/run.sh" ] || { echo "no harness at $harness (set BENCH_HARNESS)" >&2; exit 1; }
mode=${1:-returning}
build_release
case "$mode" in
  returning) export SEED_USERS=${BENCH_USERS:-1000000} PROXY_START_TIMEOUT=${PROXY_START_TIMEOUT:-90} ;;
  new) export SEED_USERS=0 BENCH_USERS=1000000000 ;;
  mixed) export SEED_USERS=0 ;;
  *) echo "mode: returning | new | mixed" >&2; exit 64 ;;
esac
cmd="$root/benches/harness-cohort.sh $root/target/release/cohort $seed"
if [ -n "${REPEAT:-}" ]; then
  exec "$harness/repeat.sh" "$REPEAT" "$cmd" 8090
fi
exec "$harness/run.sh" "$cmd" 8090
