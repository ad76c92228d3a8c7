#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/run.sh: writes a config from the harness's
# variables, optionally seeds the store with SEED_USERS returning units
# (user-1 ..= user-N, as the harness's wrk script names them), then execs
# cohort on BENCH_WORKERS worker threads (default 1: nginx runs one worker on
# the same core). BENCH_DURABILITY=write sets store.durability.
#   harness-cohort.sh COHORT_BIN [SEED_BIN]
set -euo pipefail
BIN=${1:?path to the cohort binary}
SEED=${2:-}
dir=${BENCH_RUN_DIR:-$(mktemp -d)}/cohort
mkdir -p "$dir"
. "$(dirname "$0")/lib.sh"
BENCH_STORE="{ path: $dir/data${BENCH_DURABILITY:+, durability: $BENCH_DURABILITY} }" BENCH_ACCESS_LOG=$dir/access.jsonl \
  bench_config "$dir/cohort.yaml" "$BENCH_PORT"
if [ -n "$SEED" ] && [ "${SEED_USERS:-0}" -gt 0 ]; then
  "$SEED" "$dir/cohort.yaml" "$SEED_USERS" >&2
fi
cd "$dir"
exec "$BIN" --config "$dir/cohort.yaml"
