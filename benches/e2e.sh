#!/usr/bin/env bash
# End-to-end throughput and latency: cohort vs NGINX split_clients vs direct
# to the backend, on loopback, with the shared harness (wrk, interleaved
# rounds, medians, ratios). Needs: apt-get install -y nginx wrk (haproxy too
# for the HAProxy reference).
#
#   benches/e2e.sh                      # cohort + nginx + haproxy + direct
#   REFS=nginx benches/e2e.sh           # nginx reference only (shorter)
#   bash benches/e2e.sh repeat 3        # median of 3 runs
#
# BENCH_HARNESS points at the harness (default ../shared/bench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${BENCH_HARNESS:-$root/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "no harness at $harness (set BENCH_HARNESS)" >&2; exit 1; }
cargo build --release --manifest-path "$root/Cargo.toml" >&2
cmd="$harness/cohort.sh $root/target/release/cohort"
if [ "${1:-}" = repeat ]; then
  exec "$harness/repeat.sh" "${2:-3}" "$cmd" 8090
fi
exec "$harness/run.sh" "$cmd" 8090
