#!/usr/bin/env bash
# A/B comparison of two ringgate binaries (say, the previous commit and this
# one): the same upstream stub, both gateways up at once on the same CPU,
# wrk runs alternating between them, so slow drift of a shared machine hits
# both alike. Prints each run and the ratio of medians (B ÷ A).
#
#   loadtest/ab.sh A_BINARY B_BINARY [--rounds 6] [--duration 5s]
#                  [--path /api/x] [--connections 64]
#                  [--a-server 'KEY = VALUE'] [--b-server 'KEY = VALUE']
#
# --a-server/--b-server add a line to that side's [server] section: the same
# binary twice with a setting off and on measures what the setting costs
# (e.g. --b-server 'normalize_path = false').
#
# Build A from another checkout, e.g.:
#   git worktree add /tmp/prev HEAD~1 && (cd /tmp/prev && cargo build --release --bin ringgate)
#   cargo build --release --bin ringgate --bin ringgate-stub
#   loadtest/ab.sh /tmp/prev/target/release/ringgate target/release/ringgate
#
# Layout: gateways on CPU 0 (one worker each), stub and wrk on CPU 1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
[ $# -ge 2 ] || { sed -n '2,21p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2"); shift 2
ROUNDS=6 DURATION=5s REQUEST_PATH=/api/x CONNECTIONS=64 A_SERVER="" B_SERVER=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --path) REQUEST_PATH=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --a-server) A_SERVER=$2; shift 2 ;;
        --b-server) B_SERVER=$2; shift 2 ;;
        *) echo "ab.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
STUB="$ROOT/target/release/ringgate-stub"
[ -x "$STUB" ] || (cd "$ROOT" && cargo build --release --quiet --bin ringgate-stub)
command -v wrk >/dev/null || { echo "ab.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }

RUN=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "ab.sh: port $1 never opened" >&2; exit 1; }

STUB_PORT=$(free_port)
taskset -c 1 "$STUB" --listen "127.0.0.1:$STUB_PORT" --threads 1 > "$RUN/stub.log" 2>&1 &
PIDS+=($!)
wait_port "$STUB_PORT"
declare -A PORT
for side in A B; do
    PORT[$side]=$(free_port)
    bin=$A extra=$A_SERVER
    [ "$side" = B ] && bin=$B extra=$B_SERVER
    sed -e "s/@WORKERS@/1/; s/@DRIVER@/auto/; s/@PORT@/${PORT[$side]}/; s/@UPSTREAM@/127.0.0.1:$STUB_PORT/; s/@LIMITS@//" \
        "$HERE/gateway.toml" |
        awk -v extra="$extra" '{ print } /^\[server\]$/ && extra != "" { print extra }' > "$RUN/$side.toml"
    taskset -c 0 "$bin" run -c "$RUN/$side.toml" > "$RUN/$side.log" 2>&1 &
    PIDS+=($!)
    wait_port "${PORT[$side]}"
done

for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:${PORT[$side]}$REQUEST_PATH" 2>/dev/null |
            awk '/Requests\/sec/ {print $2}')
        echo "round $r $side ${rps:-0}" | tee -a "$RUN/results"
    done
done
python3 - "$RUN/results" <<'EOF'
import statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    _, _, side, rps = line.split()
    runs[side].append(float(rps))
a, b = statistics.median(runs["A"]), statistics.median(runs["B"])
print(f"median req/s: A {a:,.0f} (min {min(runs['A']):,.0f}, max {max(runs['A']):,.0f}), "
      f"B {b:,.0f} (min {min(runs['B']):,.0f}, max {max(runs['B']):,.0f}); B/A {b / a:.3f}")
EOF
