#!/usr/bin/env bash
# Failover under load: three stub endpoints behind one upstream, keep-alive
# GET load from wrk, and one endpoint killed (SIGKILL: connection refused
# from then on) a third of the way into the run. Each gateway is set up to
# ride it out the way its documentation says:
#   ringgate  retry = { attempts = 3 } + outlier detection + TCP health checks
#   nginx     max_fails=1 fail_timeout=30s, proxy_next_upstream error timeout
#             http_502 http_503 http_504, proxy_next_upstream_tries 3
#   HAProxy   check inter 1s fall 2 rise 2, option redispatch, retries 3,
#             retry-on conn-failure empty-response response-timeout
# Targets run one after another in the same run, each against fresh stubs;
# reported per target: requests/s, p99, failed requests (non-2xx answers
# plus socket errors), and ratios to nginx.
#
# usage: loadtest/failover.sh [--duration 15s] [--connections 32]
#                             [--peers nginx,haproxy] [--quick] [--no-install]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=15 CONNECTIONS=32 PEERS=nginx,haproxy INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=${2%s}; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --quick) DURATION=6; PEERS=""; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "failover.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[failover] $*" >&2; }

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v python3 >/dev/null || need_apt+=(python3)
command -v taskset >/dev/null || need_apt+=(util-linux)
[[ ",$PEERS," == *",nginx,"* ]] && ! command -v nginx >/dev/null && need_apt+=(nginx-light)
[[ ",$PEERS," == *",haproxy,"* ]] && ! command -v haproxy >/dev/null && need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$INSTALL" = 1 ] || { log "missing: ${need_apt[*]} (and --no-install given)"; exit 2; }
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

log "building ringgate and ringgate-stub (release)"
(cd "$ROOT" && cargo build --release --quiet --bin ringgate --bin ringgate-stub)
RINGGATE="$ROOT/target/release/ringgate"
STUB="$ROOT/target/release/ringgate-stub"

OUT="$HERE/results/failover-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
PORTS=(19020 19021 19022)
GATEWAY_PORT=19023
NCPU=$(nproc)
# The gateway on CPU 0; stubs and wrk share the rest.
GW_CPUS=0
REST_CPUS=$([ "$NCPU" -gt 1 ] && echo "1-$((NCPU - 1))" || echo 0)

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # port
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "port $1 did not start serving"; exit 1
}

STUB_PIDS=()
start_stubs() {
    local p
    STUB_PIDS=()
    for p in "${PORTS[@]}"; do
        taskset -c "$REST_CPUS" "$STUB" --listen "127.0.0.1:$p" --threads 1 > "$OUT/stub-$p.log" 2>&1 &
        STUB_PIDS+=($!); PIDS+=($!)
    done
    for p in "${PORTS[@]}"; do wait_port "$p"; done
}
stop_stubs() {
    local p
    for p in "${STUB_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${STUB_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

write_configs() {
    cat > "$OUT/ringgate.toml" <<EOF
workers = 1
log_level = "warn"
[server]
idle_timeout = "120s"
[[listeners]]
bind = "127.0.0.1:$GATEWAY_PORT"
backlog = 4096
[upstreams.stub]
endpoints = ["127.0.0.1:${PORTS[0]}", "127.0.0.1:${PORTS[1]}", "127.0.0.1:${PORTS[2]}"]
pool_max_idle = 256
connect_timeout = "1s"
[upstreams.stub.health_check]
type = "tcp"
interval = "1s"
healthy_threshold = 2
unhealthy_threshold = 2
[upstreams.stub.outlier_detection]
consecutive_gateway_failure = 3
base_ejection = "30s"
[[routes]]
path_prefix = "/"
upstream = "stub"
retry = { attempts = 3, on = ["connect-failure", "reset", "timeout", "502", "503", "504"] }
EOF
    mkdir -p "$OUT/nginx-body" "$OUT/nginx-proxy"
    cat > "$OUT/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log crit;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $OUT/nginx-body;
    proxy_temp_path $OUT/nginx-proxy;
    upstream stub {
        server 127.0.0.1:${PORTS[0]} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:${PORTS[1]} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:${PORTS[2]} max_fails=1 fail_timeout=30s;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$GATEWAY_PORT reuseport backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 1s;
        proxy_next_upstream error timeout http_502 http_503 http_504;
        proxy_next_upstream_tries 3;
        location / { proxy_pass http://stub; }
    }
}
EOF
    cat > "$OUT/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    option http-keep-alive
    http-reuse always
    option redispatch
    retries 3
    retry-on conn-failure empty-response response-timeout 502 503 504
frontend gateway
    bind 127.0.0.1:$GATEWAY_PORT
    default_backend stub
backend stub
    default-server check inter 1s fall 2 rise 2
    server s1 127.0.0.1:${PORTS[0]}
    server s2 127.0.0.1:${PORTS[1]}
    server s3 127.0.0.1:${PORTS[2]}
EOF
}

start_target() { # name
    case "$1" in
        ringgate) taskset -c "$GW_CPUS" "$RINGGATE" run -c "$OUT/ringgate.toml" > "$OUT/ringgate.log" 2>&1 & ;;
        nginx) taskset -c "$GW_CPUS" nginx -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf" > "$OUT/nginx.log" 2>&1 & ;;
        haproxy) taskset -c "$GW_CPUS" haproxy -db -f "$OUT/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 & ;;
    esac
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_port "$GATEWAY_PORT"
}

stop_target() {
    kill -TERM "$TARGET_PID" 2>/dev/null || true
    wait "$TARGET_PID" 2>/dev/null || true
    # nginx's master may leave a worker a moment.
    local i
    for i in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$GATEWAY_PORT") 2>/dev/null || return 0
        sleep 0.1
    done
}

run_target() { # name → one line: name rps p99 failed total
    local name=$1 raw="$OUT/$1.wrk"
    start_stubs
    start_target "$name"
    # Warm the pools, then the measured run; a third of the way in the
    # second endpoint dies.
    taskset -c "$REST_CPUS" wrk -t1 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$GATEWAY_PORT/" > /dev/null 2>&1 || true
    taskset -c "$REST_CPUS" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$GATEWAY_PORT/" > "$raw" 2>&1 &
    local wrk_pid=$!
    sleep "$(awk "BEGIN { print $DURATION / 3 }")"
    kill -KILL "${STUB_PIDS[1]}"
    log "$name: killed the endpoint on port ${PORTS[1]}"
    wait "$wrk_pid" || true
    stop_target
    stop_stubs
    python3 - "$name" "$raw" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def num(pattern, default=0.0):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
total = int(num(r"(\d+) requests in"))
non2xx = int(num(r"Non-2xx or 3xx responses: (\d+)"))
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(int(x) for x in sock.groups()) if sock else 0
print(name, num(r"Requests/sec:\s+([\d.]+)"), ms(*p99.groups()) if p99 else 0.0, non2xx + errors, total)
PY
}

write_configs
TARGETS=(ringgate)
[[ ",$PEERS," == *",nginx,"* ]] && TARGETS+=(nginx)
[[ ",$PEERS," == *",haproxy,"* ]] && TARGETS+=(haproxy)
RESULTS="$OUT/results.txt"
: > "$RESULTS"
for t in "${TARGETS[@]}"; do
    log "running $t for ${DURATION}s"
    run_target "$t" >> "$RESULTS"
done

python3 - "$RESULTS" "$DURATION" "$CONNECTIONS" <<'PY' | tee "$OUT/summary.md"
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
by = {r[0]: (float(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows}
print(f"# Failover: one of three endpoints killed a third into {sys.argv[2]} s, {sys.argv[3]} keep-alive connections\n")
print("| target | requests/s | p99 (ms) | failed requests | of |")
print("|---|---|---|---|---|")
for name, (rps, p99, failed, total) in by.items():
    print(f"| {name} | {rps:.0f} | {p99:.2f} | {failed} | {total} |")
if "nginx" in by and by["nginx"][0] > 0:
    r, n = by["ringgate"], by["nginx"]
    print(f"\nringgate / nginx: throughput {r[0] / n[0]:.2f}, p99 {r[1] / n[1]:.2f}" if n[1] > 0 else "")
if "haproxy" in by and by["haproxy"][0] > 0:
    r, h = by["ringgate"], by["haproxy"]
    print(f"ringgate / HAProxy: throughput {r[0] / h[0]:.2f}, p99 {r[1] / h[1]:.2f}" if h[1] > 0 else "")
if by.get("ringgate", (0, 0, 1, 0))[2] != 0:
    print("\nringgate failed requests: expected none")
    sys.exit(1)
PY
log "results in $OUT"
