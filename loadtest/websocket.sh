#!/usr/bin/env bash
# WebSocket tunnels under load: an RFC 6455 echo server (ringgate-wsbench
# serve), reached directly, through ringgate (a route with upgrades =
# ["websocket"]) and through nginx (proxy_set_header Upgrade/Connection),
# all running at once, one worker each, the gateway on CPU 0. Measured in
# one run, per target:
#   - echo rate: N tunnels each sending a 128-byte message and waiting for
#     its echo (ringgate-wsbench drive), messages/s, p50/p99, and the
#     gateway's CPU per message;
#   - memory per idle tunnel: RSS of the gateway before and after opening
#     K idle tunnels (ringgate-wsbench hold), divided by K.
# Reported as ratios to direct and to nginx.
#
# usage: loadtest/websocket.sh [--duration 8s] [--connections 64]
#                              [--idle 2000] [--peers nginx] [--quick]
#                              [--no-install]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=8 CONNECTIONS=64 IDLE=2000 PEERS=nginx INSTALL=1 QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=${2%s}; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --quick) DURATION=3; IDLE=200; PEERS=""; QUICK=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "websocket.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[websocket] $*" >&2; }

need_apt=()
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v python3 >/dev/null || need_apt+=(python3)
[[ ",$PEERS," == *",nginx,"* ]] && ! command -v nginx >/dev/null && need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$INSTALL" = 1 ] || { log "missing: ${need_apt[*]} (and --no-install given)"; exit 2; }
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

log "building ringgate and ringgate-wsbench (release)"
(cd "$ROOT" && cargo build --release --quiet --bin ringgate --bin ringgate-wsbench)
RINGGATE="$ROOT/target/release/ringgate"
BENCH="$ROOT/target/release/ringgate-wsbench"

OUT="$HERE/results/websocket-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
SERVER_PORT=19040
declare -A PORT=([direct]=19040 [ringgate]=19041 [nginx]=19042)
NCPU=$(nproc)
GW_CPUS=0
REST_CPUS=$([ "$NCPU" -gt 1 ] && echo "1-$((NCPU - 1))" || echo 0)
ulimit -n 65536 2>/dev/null || true

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

cat > "$OUT/ringgate.toml" <<EOF
workers = 1
log_level = "warn"
[server]
max_connections_per_worker = 60000
[[listeners]]
bind = "127.0.0.1:${PORT[ringgate]}"
backlog = 4096
[upstreams.ws]
endpoints = ["127.0.0.1:$SERVER_PORT"]
[[routes]]
path_prefix = "/ws"
upstream = "ws"
upgrades = ["websocket"]
tunnel_idle_timeout = "10m"
EOF
mkdir -p "$OUT/nginx-body" "$OUT/nginx-proxy"
cat > "$OUT/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log crit;
events { worker_connections 60000; }
http {
    access_log off;
    client_body_temp_path $OUT/nginx-body;
    proxy_temp_path $OUT/nginx-proxy;
    server {
        listen 127.0.0.1:${PORT[nginx]} reuseport backlog=4096;
        location /ws {
            proxy_pass http://127.0.0.1:$SERVER_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 600s;
        }
    }
}
EOF

declare -A TPID=()
taskset -c "$REST_CPUS" "$BENCH" serve "127.0.0.1:$SERVER_PORT" > "$OUT/server.log" 2>&1 &
PIDS+=($!); TPID[direct]=$!
wait_port "$SERVER_PORT"
taskset -c "$GW_CPUS" "$RINGGATE" run -c "$OUT/ringgate.toml" > "$OUT/ringgate.log" 2>&1 &
PIDS+=($!); TPID[ringgate]=$!
wait_port "${PORT[ringgate]}"
TARGETS=(direct ringgate)
if [[ ",$PEERS," == *",nginx,"* ]]; then
    taskset -c "$GW_CPUS" nginx -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf" > "$OUT/nginx.log" 2>&1 &
    PIDS+=($!); TPID[nginx]=$!
    wait_port "${PORT[nginx]}"
    TARGETS+=(nginx)
fi

# Sums over a process and its children (nginx's worker).
sum_tree() { # pid file awk
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        [ -r "/proc/$p/$2" ] || continue
        total=$((total + $(awk "$3" "/proc/$p/$2")))
    done
    echo "$total"
}
cpu_ticks() { sum_tree "$1" stat '{print $14 + $15}'; }
rss_kib() { sum_tree "$1" status '/^VmRSS/ {print $2}'; }

echo "target messages_per_s p50_us p99_us gateway_cpu_us_per_message idle_tunnels rss_per_idle_tunnel_bytes" > "$OUT/results.txt"
for target in "${TARGETS[@]}"; do
    pid=${TPID[$target]}
    log "$target: echo rate, $CONNECTIONS tunnels for ${DURATION}s"
    before=$(cpu_ticks "$pid")
    line=$(taskset -c "$REST_CPUS" "$BENCH" drive "127.0.0.1:${PORT[$target]}" --connections "$CONNECTIONS" --duration "$DURATION" --size 128)
    after=$(cpu_ticks "$pid")
    messages=$(sed -E 's/.*messages=([0-9]+).*/\1/' <<< "$line")
    rate=$(sed -E 's/.*rate=([0-9]+).*/\1/' <<< "$line")
    p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<< "$line")
    p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<< "$line")
    cpu_us="—"
    if [ "$target" != direct ] && [ "$messages" -gt 0 ]; then
        cpu_us=$(python3 -c "print(f'{($after - $before) / $(getconf CLK_TCK) * 1e6 / $messages:.2f}')")
    fi
    rss_per="—"
    held=0
    if [ "$target" != direct ]; then
        log "$target: $IDLE idle tunnels"
        rss_before=$(rss_kib "$pid")
        mkfifo "$OUT/hold.$target"
        taskset -c "$REST_CPUS" "$BENCH" hold "127.0.0.1:${PORT[$target]}" --connections "$IDLE" < "$OUT/hold.$target" > "$OUT/hold.$target.out" 2>&1 &
        holder=$!
        PIDS+=("$holder")
        exec {HOLDFD}>"$OUT/hold.$target"
        for _ in $(seq 1 600); do grep -q ready "$OUT/hold.$target.out" 2>/dev/null && break; sleep 0.1; done
        held=$(awk '/ready/ {print $2}' "$OUT/hold.$target.out")
        sleep 0.5
        rss_after=$(rss_kib "$pid")
        exec {HOLDFD}>&-
        wait "$holder" 2>/dev/null || true
        rm -f "$OUT/hold.$target"
        if [ "${held:-0}" -gt 0 ]; then
            rss_per=$(( (rss_after - rss_before) * 1024 / held ))
        fi
    fi
    echo "$target $rate $p50 $p99 $cpu_us ${held:-0} $rss_per" >> "$OUT/results.txt"
done

python3 - "$OUT/results.txt" "$QUICK" <<'PY'
import sys
rows = {}
with open(sys.argv[1]) as f:
    head = f.readline().split()
    for line in f:
        parts = line.split()
        rows[parts[0]] = dict(zip(head[1:], parts[1:]))
print("| target | messages/s | p50 | p99 | gateway CPU µs/message | idle tunnels held | RSS per idle tunnel |")
print("|---|---|---|---|---|---|---|")
for t, r in rows.items():
    print(f"| {t} | {int(r['messages_per_s']):,} | {r['p50_us']} µs | {r['p99_us']} µs | {r['gateway_cpu_us_per_message']} | {r['idle_tunnels']} | {r['rss_per_idle_tunnel_bytes']} B |")
rg = rows.get("ringgate")
for peer in ("direct", "nginx"):
    p = rows.get(peer)
    if rg and p and int(p["messages_per_s"]):
        line = f"ringgate ÷ {peer}: messages/s {int(rg['messages_per_s']) / int(p['messages_per_s']):.2f}"
        if peer == "nginx":
            try:
                line += f", CPU per message {float(rg['gateway_cpu_us_per_message']) / float(p['gateway_cpu_us_per_message']):.2f}"
                line += f", RSS per idle tunnel {int(rg['rss_per_idle_tunnel_bytes']) / int(p['rss_per_idle_tunnel_bytes']):.2f}"
            except (ValueError, ZeroDivisionError):
                pass
        print(line)
if sys.argv[2] == "1":
    bad = [t for t, r in rows.items() if int(r["messages_per_s"]) <= 0 or (t != "direct" and int(r["idle_tunnels"]) <= 0)]
    if bad:
        print("WEBSOCKET CHECK FAILED:", ", ".join(bad))
        sys.exit(1)
    print("websocket check: every target carried messages and held its idle tunnels")
PY
log "results in $OUT"
