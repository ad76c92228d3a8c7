#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/run.sh: writes a config from the harness's
# variables, optionally seeds the store with SEED_USERS returning units
# (user-1 ..= user-N, as the harness's wrk script names them), then execs
# cohort on one worker thread (nginx runs one worker on the same core).
#   harness-cohort.sh COHORT_BIN [SEED_BIN]
set -euo pipefail
BIN=${1:?path to the cohort binary}
SEED=${2:-}
dir=${BENCH_RUN_DIR:-$(mktemp -d)}/cohort
mkdir -p "$dir"
cat > "$dir/cohort.yaml" <<YAML
listen: 127.0.0.1:${BENCH_PORT}
store: { path: $dir/data }
access_log: { path: $dir/access.jsonl }
runtime: { worker_threads: 1 }
upstreams:
  old: { url: http://${BENCH_OLD_UPSTREAM} }
  new: { url: http://${BENCH_NEW_UPSTREAM} }
experiments:
  - name: bench
    routes: [/predict]
    unit_header: x-user-id
    salt: bench
    variants:
      - { name: old, upstream: old, weight: 50 }
      - { name: new, upstream: new, weight: 50 }
YAML
if [ -n "$SEED" ] && [ "${SEED_USERS:-0}" -gt 0 ]; then
  "$SEED" "$dir/cohort.yaml" "$SEED_USERS" >&2
fi
cd "$dir"
exec "$BIN" --config "$dir/cohort.yaml"
