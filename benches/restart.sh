#!/usr/bin/env bash
# Restart-to-ready time and resident memory of the real proxy process with
# N units stored (seeded through the real assignment path first).
#   benches/restart.sh 1000000
#   benches/restart.sh 10000000
set -euo pipefail
. "$(dirname "$0")/lib.sh"
n=${1:-1000000}
build_release
dir=$(mktemp -d)
trap 'kill $(cat $dir/pid 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/cohort.yaml" <<YAML
listen: 127.0.0.1:0
store: { path: ./data }
access_log: { path: ./access.jsonl }
upstreams:
  old: { url: http://127.0.0.1:9 }
  new: { url: http://127.0.0.1:9 }
experiments:
  - name: bench
    routes: [/predict]
    salt: bench
    variants:
      - { name: old, upstream: old, weight: 50 }
      - { name: new, upstream: new, weight: 50 }
YAML
"$seed" "$dir/cohort.yaml" "$n"
echo "journal: $(du -h "$dir/data/journal.cohort" | cut -f1)"
sync
start=$(date +%s.%N)
"$root/target/release/cohort" --config "$dir/cohort.yaml" 2> "$dir/err" &
echo $! > "$dir/pid"
until grep -q "listening on" "$dir/err"; do sleep 0.01; done
end=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' /proc/$(cat "$dir/pid")/status)
echo "units: $n"
echo "restart to ready: $(echo "$end - $start" | bc) s"
echo "proxy RSS: $((rss / 1024)) MiB = $(echo "$rss * 1024 / $n" | bc) bytes/unit (whole process)"
