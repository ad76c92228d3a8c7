# Shared by the bench scripts: source it, don't run it.
# Sets: root, harness, seed (path of the built benches/seed.rs binary).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
harness=${BENCH_HARNESS:-$root/../shared/bench}

# Builds the release binary and the seed tool; sets $seed.
build_release() {
  cargo build --release --manifest-path "$root/Cargo.toml" >&2
  seed=$(bench_binary seed)
}

# Builds benches/$1.rs (harness = false) and prints its executable's path.
bench_binary() {
  cargo bench --manifest-path "$root/Cargo.toml" --bench "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]==sys.argv[1] and m.get("executable"): print(m["executable"])' "$1" | tail -1
}

# Starts the harness's nginx model backends (127.0.0.1:9001, :9002) on core 1
# with their files in $1; they stop when $1/backends.pid's process is killed.
start_backends() {
  mkdir -p "$1/logs" "$1/tmp"
  cp "$harness/conf/backends.conf" "$1/"
  taskset -c 1 chrt -b 0 nginx -p "$1/" -c "$1/backends.conf" -e "$1/logs/err.log" &
  sleep 0.3
}

# Writes the one bench config every script uses (experiment `bench`, 50/50
# old/new on X-User-Id, salt `bench`, one worker thread) to $1, listening
# on port $2. Environment, each with its default:
#   BENCH_WORKERS     runtime.worker_threads (1)
#   BENCH_STORE       the store block    ({ path: ./data })
#   BENCH_ACCESS_LOG  the log's path     (./access.jsonl)
#   BENCH_OLD_UPSTREAM, BENCH_NEW_UPSTREAM  (127.0.0.1:9001, 127.0.0.1:9002)
#   BENCH_EXTRA       more top-level lines (a `tls:` block, say)
bench_config() {
  cat > "$1" <<YAML
listen: 127.0.0.1:${2:-8090}
${BENCH_EXTRA:-}
store: ${BENCH_STORE:-{ path: ./data \}}
access_log: { path: ${BENCH_ACCESS_LOG:-./access.jsonl} }
runtime: { worker_threads: ${BENCH_WORKERS:-1} }
upstreams:
  old: { url: http://${BENCH_OLD_UPSTREAM:-127.0.0.1:9001} }
  new: { url: http://${BENCH_NEW_UPSTREAM:-127.0.0.1:9002} }
experiments:
  - name: bench
    routes: [/predict]
    unit_header: x-user-id
    salt: bench
    variants:
      - { name: old, upstream: old, weight: 50 }
      - { name: new, upstream: new, weight: 50 }
YAML
}

# Makes a scratch dir ($dir) that is removed on exit, stopping the cohort
# ($dir/cohort.pid) and backends ($dir/backends.pid) started in it.
new_run_dir() {
  dir=$(mktemp -d)
  trap 'for p in "$dir"/cohort.pid "$dir"/backends.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; sleep 0.3; rm -rf "$dir"' EXIT
}
