#!/usr/bin/env bash
# Restart-to-ready time and resident memory of the real proxy process with
# N units stored (seeded through the real assignment path first).
#   benches/restart.sh 1000000
#   benches/restart.sh 10000000
set -euo pipefail
. "$(dirname "$0")/lib.sh"
n=${1:-1000000}
build_release
new_run_dir
bench_config "$dir/cohort.yaml" 0
"$seed" "$dir/cohort.yaml" "$n"
echo "journal: $(du -h "$dir/data/journal.cohort" | cut -f1)"
sync
start=$(date +%s.%N)
"$root/target/release/cohort" --config "$dir/cohort.yaml" 2> "$dir/err" &
echo $! > "$dir/cohort.pid"
until grep -q "listening on" "$dir/err"; do sleep 0.01; done
end=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' /proc/$(cat "$dir/cohort.pid")/status)
echo "units: $n"
echo "restart to ready: $(echo "$end - $start" | bc) s"
echo "proxy RSS: $((rss / 1024)) MiB = $(echo "$rss * 1024 / $n" | bc) bytes/unit (whole process)"
