#!/usr/bin/env bash
# HTTP/2 and TLS side by side: cohort vs NGINX (split_clients, the same
# 50/50 split, one worker each, pinned like ../shared/bench/run.sh), with
# h2load (Debian's nghttp2-client):
#   - h2c:  HTTP/2 with prior knowledge on a plaintext port;
#   - h2:   HTTP/2 over TLS 1.3 (ALPN h2), connections kept;
#   - tls:  new TLS connections per second (one request per connection;
#           its p99 column is 0: h2load times requests, not handshakes).
# Rounds alternate between the two proxies; the figures are medians over
# rounds, req/s and p99 from h2load's per-request log, CPU per request from
# the proxy's /proc/PID/stat (NGINX: master and worker).
#
#   apt-get install -y nginx nghttp2-client openssl
#   benches/h2.sh                  # ROUNDS=5 DURATION=5 CONNS=32 STREAMS=10
#   TLS_CONNS=100 benches/h2.sh    # new connections per burst (tls mode)
#
# Pinning (2-core default): h2load on core 0, proxies and backends on core 1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
for t in nginx h2load openssl; do
  command -v $t >/dev/null || { echo "h2.sh needs $t (apt-get install -y nginx nghttp2-client openssl)" >&2; exit 1; }
done
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-5} CONNS=${CONNS:-32} STREAMS=${STREAMS:-10}
TLS_CONNS=${TLS_CONNS:-100} LOAD_CPU=${LOAD_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
cargo build --release --manifest-path "$root/Cargo.toml" >&2
bin=$root/target/release/cohort
run=$(mktemp -d /tmp/cohort-h2.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "nginx -p $run/" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_TMP:-}" ] || rm -rf "$run"; }
trap cleanup EXIT
mkdir -p "$run/logs" "$run/tmp"

# A self-signed certificate for 127.0.0.1 (both proxies serve the same one).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$run/key.pem" -out "$run/cert.pem" 2>/dev/null

start_backends "$run"

cat > "$run/nginx-h2.conf" <<NGINX
worker_processes 1;
daemon off;
master_process on;
pid proxy.pid;
error_log logs/proxy-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    tcp_nodelay on;
    client_body_temp_path tmp/p_body;
    proxy_temp_path tmp/p_proxy;
    fastcgi_temp_path tmp/p_fastcgi;
    uwsgi_temp_path tmp/p_uwsgi;
    scgi_temp_path tmp/p_scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $run/cert.pem;
    ssl_certificate_key $run/key.pem;
    split_clients "\${http_x_user_id}" \$variant { 50% old; * new; }
    upstream model_old { server 127.0.0.1:9001; keepalive 128; }
    upstream model_new { server 127.0.0.1:9002; keepalive 128; }
    log_format cohort '\$time_iso8601 "\$request" \$status user=\$http_x_user_id variant=\$variant rt=\$request_time';
    server {
        listen 127.0.0.1:8181 http2 backlog=4096;
        listen 127.0.0.1:8543 ssl http2 backlog=4096;
        access_log logs/proxy-access.log cohort buffer=64k flush=1s;
        location / {
            proxy_pass http://model_\$variant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Variant \$variant always;
        }
    }
}
NGINX
taskset -c "$PROXY_CPU" nginx -p "$run/" -c "$run/nginx-h2.conf" -e "$run/logs/proxy-error.log" &
pids+=($!)

# cohort: one process per listener (plaintext h2c, TLS), one worker each.
cohort_config() { # port dir [tls]
  mkdir -p "$2"
  local extra=
  [ -z "${3:-}" ] || extra="tls: { cert_file: $run/cert.pem, key_file: $run/key.pem }"
  BENCH_EXTRA=$extra BENCH_STORE="{ path: $2/data }" BENCH_ACCESS_LOG=$2/access.jsonl \
    bench_config "$2/cohort.yaml" "$1"
}
cohort_config 8191 "$run/c-h2c"
cohort_config 8553 "$run/c-tls" tls
(cd "$run/c-h2c" && exec taskset -c "$PROXY_CPU" "$bin" --config cohort.yaml >"$run/logs/c-h2c.log" 2>&1) &
c_h2c=$!; pids+=($c_h2c)
(cd "$run/c-tls" && exec taskset -c "$PROXY_CPU" "$bin" --config cohort.yaml >"$run/logs/c-tls.log" 2>&1) &
c_tls=$!; pids+=($c_tls)

wait_port() { for _ in $(seq 100); do curl -sk --http2-prior-knowledge -o /dev/null "$1" -H 'x-user-id: u1' && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }
wait_port http://127.0.0.1:8181/predict
wait_port http://127.0.0.1:8191/predict
wait_port https://127.0.0.1:8553/predict
# Both must really split and stamp over HTTP/2.
curl -s --http2-prior-knowledge -D - -o /dev/null http://127.0.0.1:8191/predict -H 'x-user-id: u1' | grep -qi '^x-cohort-variant' \
  || { echo "cohort h2c answer is not stamped" >&2; exit 2; }
curl -sk --http2 -D - -o /dev/null https://127.0.0.1:8543/predict -H 'x-user-id: u1' | grep -qi '^HTTP/2' \
  || { echo "nginx does not answer h2 over TLS" >&2; exit 2; }

nginx_pids() { pgrep -f "nginx -p $run/ -c $run/nginx-h2.conf" | tr '\n' ' '; pgrep -P "$(pgrep -f "nginx -p $run/ -c $run/nginx-h2.conf" | head -1)" | tr '\n' ' '; }
ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
hz=$(getconf CLK_TCK)
body=$run/body.json
printf '{"features":[0.12,0.5,0.33,0.91,0.07,0.66],"request_id":"bench"}' > "$body"

# One measurement: prints "rps p99_us cpu_us_per_req".
measure() { # name url pids mode
  local log=$run/h2load.log out c0 c1 n secs
  rm -f "$log"
  c0=$(ticks "$3")
  if [ "$4" = tls ]; then
    # Bursts of TLS_CONNS new connections, one request each, for DURATION s.
    local t0 t1 total=0 ok=1
    t0=$(date +%s.%N)
    while :; do
      out=$(taskset -c "$LOAD_CPU" h2load -n "$TLS_CONNS" -c "$TLS_CONNS" -m 1 -t 1 -d "$body" \
        -H 'x-user-id: user-42' -H 'content-type: application/json' "$2" 2>&1)
      echo "$out" | grep -q "succeeded, 0 failed, 0 errored" || ok=0
      total=$((total + TLS_CONNS))
      t1=$(date +%s.%N)
      awk -v a="$t0" -v b="$t1" -v d="$DURATION" 'BEGIN {exit !(b - a < d)}' || break
    done
    c1=$(ticks "$3")
    [ $ok = 1 ] || echo "$1: h2load saw failed TLS requests" >&2
    awk -v n="$total" -v a="$t0" -v b="$t1" -v c=$((c1 - c0)) -v hz="$hz" \
      'BEGIN {printf "%.0f 0 %.2f\n", n/(b-a), c*1e6/hz/n}'
    return
  fi
  out=$(taskset -c "$LOAD_CPU" h2load -D "$DURATION" -c "$CONNS" -m "$STREAMS" -t 1 -d "$body" \
    -H 'x-user-id: user-42' -H 'content-type: application/json' --log-file="$log" "$2" 2>&1)
  c1=$(ticks "$3")
  echo "$out" | grep -q "succeeded, 0 failed, 0 errored" || { echo "$1: h2load saw failures:" >&2; echo "$out" | grep -E "requests:|status codes" >&2; }
  n=$(echo "$out" | awk '/^requests:/ {print $8}')
  secs=$(echo "$out" | awk '/^finished in/ {v=$3; sub(/,$/,"",v); if (v ~ /ms$/) {sub(/ms$/,"",v); v/=1000} else sub(/s$/,"",v); print v}')
  p99=$(awk '{print $3}' "$log" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)]}')
  awk -v n="$n" -v s="$secs" -v p="$p99" -v c=$((c1 - c0)) -v hz="$hz" \
    'BEGIN {printf "%.0f %d %.2f\n", n/s, p, c*1e6/hz/n}'
}

printf 'mode\tround\tproxy\trps\tp99_us\tcpu_us_per_req\n' > "$run/results.tsv"
np=$(nginx_pids)
for r in $(seq "$ROUNDS"); do
  for mode in h2c h2 tls; do
    case $mode in
      h2c) n_url=http://127.0.0.1:8181/predict; c_url=http://127.0.0.1:8191/predict; cp=$c_h2c ;;
      *)   n_url=https://127.0.0.1:8543/predict; c_url=https://127.0.0.1:8553/predict; cp=$c_tls ;;
    esac
    # Alternate which proxy goes first.
    if [ $((r % 2)) = 1 ]; then order="nginx cohort"; else order="cohort nginx"; fi
    for who in $order; do
      if [ $who = nginx ]; then m=$(measure nginx "$n_url" "$np" $mode); else m=$(measure cohort "$c_url" "$cp" $mode); fi
      printf '%s\t%s\t%s\t%s\n' "$mode" "$r" "$who" "$(echo "$m" | tr ' ' '\t')" >> "$run/results.tsv"
    done
  done
done
column -t "$run/results.tsv" >&2
python3 - "$run/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("mode  proxy   req/s(median)  p99_us(median)  cpu_us/req(median)")
for mode in ("h2c", "h2", "tls"):
    med = {}
    for who in ("nginx", "cohort"):
        rs = [r for r in rows if r["mode"] == mode and r["proxy"] == who]
        med[who] = [statistics.median(float(r[k]) for r in rs) for k in ("rps", "p99_us", "cpu_us_per_req")]
        print(f"{mode:5} {who:7} {med[who][0]:13.0f} {med[who][1]:15.0f} {med[who][2]:19.2f}")
    n, c = med["nginx"], med["cohort"]
    p99 = f"{c[1]/n[1]:.2f}" if n[1] else "n/a"
    print(f"RATIO {mode} cohort/nginx rps={c[0]/n[0]:.2f} p99={p99} cpu_per_req={c[2]/n[2]:.2f}")
PY
