#!/usr/bin/env bash
# `cohort report` speed and memory: generates LINES access-log lines over
# UNITS units (benches/report.rs), then reports them with the release
# binary, pinned to one core, and prints lines/s and the peak RSS.
#   benches/report.sh [LINES [UNITS]]      # default 5000000 1000000
#   COMPRESS=gzip benches/report.sh               # the same log gzip-compressed
# Run it twice with different LINES and the same UNITS: the peak RSS stays
# (memory is bounded by units, not lines); with different UNITS it moves by
# about the bytes per unit docs/report.md states.
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-5000000}
units=${2:-1000000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo build --release --locked --quiet --bin cohort
cargo bench --locked --quiet --bench report -- "$dir/access.jsonl" "$lines" "$units"
log="$dir/access.jsonl"
if [ "${COMPRESS:-}" = gzip ]; then
  gzip -1 "$log"
  log="$log.gz"
fi
echo "log: $lines lines, $units units, $(du -m "$log" | cut -f1) MiB${COMPRESS:+ ($COMPRESS)}"
python3 - "$log" "$lines" <<'PY'
import resource, subprocess, sys, time
log, lines = sys.argv[1], int(sys.argv[2])
cmd = ["target/release/cohort", "report", "--no-progress", "--format", "json", log]
try:
    subprocess.run(["taskset", "-c", "0", "true"], check=True)
    cmd = ["taskset", "-c", "0"] + cmd
except (OSError, subprocess.CalledProcessError):
    pass
t0 = time.monotonic()
done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
secs = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = ru.ru_utime + ru.ru_stime
# ru_maxrss is KiB on Linux. Lines per CPU second is the figure on a busy
# machine (the report is single-threaded); wall time only on an idle one.
print(f"exit {done.returncode}; wall {secs:.2f} s ({lines / secs / 1e6:.2f} M lines/s); "
      f"cpu {cpu:.2f} s ({lines / cpu / 1e6:.2f} M lines/s per core); peak RSS {ru.ru_maxrss / 1024:.1f} MiB")
PY
