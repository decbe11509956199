#!/usr/bin/env bash
# Side-by-side: ringgate (1 worker) vs nginx (1 worker, upstream keepalive)
# proxying the same small response, interleaved rounds in one run.
# This is the seed of the full suite (loadtest/run.sh, a later issue).
#
#   loadtest/compare-nginx.sh [--duration 10s] [--rounds 3] [--connections 64]
#
# CPU layout on a 2-core machine: the gateway under test on CPU 0; the
# upstream (nginx `return 200`) and wrk share CPU 1. Needs: wrk, nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=10s ROUNDS=3 CONNS=64
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "needs wrk and nginx: apt-get install -y wrk nginx-light" >&2; exit 2; }
NCPU=$(nproc)
GW_CPU=0; LOAD_CPU=$(( NCPU > 1 ? 1 : 0 ))
cargo build --release -q
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

cat > "$WORK/upstream.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/up.pid; error_log $WORK/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18081 reuseport; location / { return 200 "hello world\n"; } } }
NGX
cat > "$WORK/nginx-proxy.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/px.pid; error_log $WORK/px.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:18081; keepalive 64; }
  server { listen 127.0.0.1:18082; location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
cat > "$WORK/ringgate.toml" <<TOML
workers = 1
[[listeners]]
bind = "127.0.0.1:18083"
[upstreams.app]
endpoints = ["127.0.0.1:18081"]
pool_max_idle = 64
[[routes]]
upstream = "app"
TOML

taskset -c "$LOAD_CPU" nginx -c "$WORK/upstream.conf" & PIDS+=($!)
taskset -c "$GW_CPU" nginx -c "$WORK/nginx-proxy.conf" & PIDS+=($!)
taskset -c "$GW_CPU" target/release/ringgate run -c "$WORK/ringgate.toml" --log-level warn >/dev/null & PIDS+=($!)
sleep 1
for port in 18081 18082 18083; do curl -sf "http://127.0.0.1:$port/" >/dev/null || { echo "port $port not serving" >&2; exit 1; }; done

declare -A RESULTS
run() { # name port
    local out
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2/")
    local rps p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    echo "$1 round $3: $rps req/s, p99 $p99"
    RESULTS[$1]+="$rps "
}
# Warm-up, then interleaved rounds.
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:18083/ >/dev/null
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s http://127.0.0.1:18082/ >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    run ringgate 18083 "$r"
    run nginx 18082 "$r"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
RG=$(echo "${RESULTS[ringgate]}" | median)
NG=$(echo "${RESULTS[nginx]}" | median)
echo "median: ringgate $RG req/s, nginx $NG req/s, ratio $(awk -v a="$RG" -v b="$NG" 'BEGIN {printf "%.2f", a/b}')"
