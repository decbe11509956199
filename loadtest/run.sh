#!/usr/bin/env bash
# ringgate's bundled load-test suite: ringgate side by side with nginx,
# HAProxy (http), a pure L4 relay (HAProxy mode tcp) and the upstream alone
# (direct), scenarios interleaved over several rounds, every figure reported
# as a ratio taken in the same run. See docs/benchmarks.md.
#
#   loadtest/run.sh [--duration 10s] [--rounds 3] [--workers 1]
#                   [--scenarios small-get,latency,...] [--peers nginx,haproxy]
#                   [--rate 20000] [--idle 10000] [--driver auto|io_uring|epoll]
#                   [--quick] [--scaling 1,2,4,8] [--no-install] [--prebuilt DIR]
#
# --prebuilt DIR uses the programs packed by loadtest/pack-offline.sh (no
# cargo, no apt, no network): for a many-core machine without a network.
#
# CPU layout (documented in docs/benchmarks.md): the gateway under test gets
# CPUs [0, W); the upstream stub and the load generator split the rest. On a
# 2-core machine with W=1: gateway on CPU 0, stub and generator share CPU 1.
# All targets run at once, pinned to the same gateway CPUs; only the one under
# load uses them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OHA_VERSION=1.14.0

DURATION=10s ROUNDS=3 WORKERS=1 SCENARIOS=all PEERS=nginx,haproxy RATE=20000 IDLE=10000
DRIVER=auto QUICK=0 SCALING="" INSTALL=1 PREBUILT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --peers) PEERS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --driver) DRIVER=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --scaling) SCALING=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --prebuilt) PREBUILT=$(cd "$2" && pwd); INSTALL=0; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    # CI mode: correctness under load, never speed. ringgate only.
    DURATION=3s ROUNDS=1 PEERS="" RATE=2000 IDLE=1000
fi
if [ "$SCENARIOS" = all ]; then
    # The documented order first, then any scenario file added since.
    SCENARIOS=small-get,latency,response-16k,post-1k,new-connection,idle-10k,mixed,access-log,ratelimit-cost,ratelimit-admitted,https-small-get,https-response-16k,https-new-connection,https-new-connection-rsa,https-resumed,https-idle-10k
    for f in "$HERE"/scenarios/*.sh; do
        s=$(basename "$f" .sh)
        [[ ",$SCENARIOS," == *",$s,"* ]] || SCENARIOS="$SCENARIOS,$s"
    done
fi

log() { echo "[loadtest] $*" >&2; }

# ------------------------------------------------------------ tools
TOOLS_BIN="$ROOT/target/loadtest-tools/bin"
export PATH="$TOOLS_BIN:$PATH"
[ -n "$PREBUILT" ] && export PATH="$PREBUILT/bin:$PATH"
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v python3 >/dev/null || need_apt+=(python3)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v taskset >/dev/null || need_apt+=(util-linux)
[[ ",$PEERS," == *",nginx,"* ]] && ! command -v nginx >/dev/null && need_apt+=(nginx-light)
[[ ",$PEERS," == *",haproxy,"* ]] && ! command -v haproxy >/dev/null && need_apt+=(haproxy)
# HTTPS scenarios: test certificates are made with the openssl CLI.
TLS_WANTED=0
[[ ",$SCENARIOS," == *",https-"* ]] && TLS_WANTED=1
AUTH_WANTED=0
[[ ",$SCENARIOS," == *",auth-"* ]] && AUTH_WANTED=1
CACHE_WANTED=0
[[ ",$SCENARIOS," == *",cache-"* ]] && CACHE_WANTED=1
POLICY_WANTED=0
[[ ",$SCENARIOS," == *",policy-"* ]] && POLICY_WANTED=1
[ "$AUTH_WANTED" = 1 ] && ! command -v openssl >/dev/null && need_apt+=(openssl)
[ "$TLS_WANTED" = 1 ] && ! command -v openssl >/dev/null && need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$INSTALL" = 1 ] || { log "missing: ${need_apt[*]} (and --no-install given)"; exit 2; }
    log "installing ${need_apt[*]} from Debian's packages"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
needs_oha=0
for s in ${SCENARIOS//,/ }; do
    grep -q '^TOOL=oha' "$HERE/scenarios/$s.sh" 2>/dev/null && needs_oha=1
done
if [ "$needs_oha" = 1 ] && ! command -v oha >/dev/null; then
    [ "$INSTALL" = 1 ] || { log "oha missing (and --no-install given)"; exit 2; }
    log "installing oha $OHA_VERSION with cargo install --locked (once, into target/loadtest-tools)"
    cargo install --locked --quiet "oha@$OHA_VERSION" --root "$ROOT/target/loadtest-tools"
fi

if [ -n "$PREBUILT" ]; then
    RINGGATE="$PREBUILT/bin/ringgate"
    STUB="$PREBUILT/bin/ringgate-stub"
else
    log "building ringgate and ringgate-stub (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin ringgate --bin ringgate-stub)
    RINGGATE="$ROOT/target/release/ringgate"
    STUB="$ROOT/target/release/ringgate-stub"
fi

# ------------------------------------------------------------ run state
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$HERE/results/$STAMP"
RAW="$OUT/raw"
RUN="$OUT/run"
mkdir -p "$RAW" "$RUN"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local i alive
    for i in $(seq 1 50); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
# Idle-connection scenarios need tens of thousands of descriptors (an L4
# relay holds two per connection); root may raise the hard limit.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
# HAProxy reserves two descriptors per connection; an L4 relay really uses two.
MAXCONN=$(( (FD_LIMIT - 200) / 2 ))
IDLE_CAP=$(( (FD_LIMIT - 1000) / 2 ))
if [ "$IDLE" -gt "$IDLE_CAP" ]; then
    log "descriptor limit $FD_LIMIT: holding $IDLE_CAP idle connections instead of $IDLE (a relay needs two descriptors each)"
    IDLE=$IDLE_CAP
fi

NCPU=$(nproc)
cpu_range() { # first count
    local first=$1 count=$2
    [ "$count" -le 1 ] && { echo "$first"; return; }
    echo "$first-$((first + count - 1))"
}
layout() { # sets GW_CPUS STUB_CPUS GEN_CPUS GEN_THREADS STUB_THREADS for $1 workers
    local w=$1 rest
    rest=$((NCPU - w))
    GW_CPUS=$(cpu_range 0 "$w")
    if [ "$rest" -le 0 ]; then
        GW_CPUS=$(cpu_range 0 "$NCPU"); STUB_CPUS=$GW_CPUS; GEN_CPUS=$GW_CPUS; STUB_THREADS=1; GEN_THREADS=1
    elif [ "$rest" -eq 1 ]; then
        STUB_CPUS=$w; GEN_CPUS=$w; STUB_THREADS=1; GEN_THREADS=1
    else
        local stub=$((rest / 2)) gen=$((rest - rest / 2))
        STUB_CPUS=$(cpu_range "$w" "$stub"); GEN_CPUS=$(cpu_range $((w + stub)) "$gen")
        STUB_THREADS=$stub; GEN_THREADS=$gen
    fi
}

render() { # template output port
    sed -e "s|@WORKERS@|$WORKERS|g" -e "s|@PORT@|$2|g" -e "s|@PORT2@|${PORT2:-}|g" -e "s|@PORT3@|${PORT3:-}|g" -e "s|@CERTDIR@|$RUN/certs|g" -e "s|@UPSTREAM@|127.0.0.1:$STUB_PORT|g" \
        -e "s|@RUNDIR@|$RUN|g" -e "s|@DRIVER@|$DRIVER|g" -e "s|@MAXCONN@|$MAXCONN|g" \
        -e "s|@FDLIMIT@|$FD_LIMIT|g" -e "s|@LIMITS@|${LIMITS:-}|g" "$1" > "$3"
}

wait_port() { # port
    local i
    for i in $(seq 1 100); do
        # bash's /dev/tcp: no curl needed on a bare machine.
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "port $1 did not start serving"; exit 1
}

STUB_PORT=19000
declare -A PORT=([direct]=19000 [ringgate]=19001 [nginx]=19002 [haproxy]=19003 [l4]=19004 [ringgate-log]=19005 [ringgate-limited]=19006 [ringgate-node]=19007 [ringgate-capped]=19008
    [ringgate-auth]=19015 [ringgate-cache]=19016 [ringgate-policy]=19018 [ringgate-tls-ecdsa]=19009 [ringgate-tls-ecdsa-full]=19010 [ringgate-tls-rsa-full]=19011
    [nginx-tls-ecdsa]=19012 [nginx-tls-ecdsa-full]=19013 [nginx-tls-rsa-full]=19014)
# The node-wide limit of the ratelimit-admitted scenario (requests/s), well
# under what one worker serves here, and its burst.
CAP_RATE=20000
CAP_BURST=2000
declare -A TPID=()
# ringgate-cache's admin listener: the cache-zipf scenario reads its hit
# ratio from the metrics.
CACHE_ADMIN_PORT=19017

start_targets() {
    layout "$WORKERS"
    log "layout: $NCPU CPUs; gateway CPUs $GW_CPUS, stub CPUs $STUB_CPUS ($STUB_THREADS threads), load generator CPUs $GEN_CPUS ($GEN_THREADS threads)"
    taskset -c "$STUB_CPUS" "$STUB" --listen "127.0.0.1:$STUB_PORT" --threads "$STUB_THREADS" > "$RUN/stub.log" 2>&1 &
    PIDS+=($!); TPID[direct]=$!
    wait_port "$STUB_PORT"
    render "$HERE/gateway.toml" "${PORT[ringgate]}" "$RUN/ringgate.toml"
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate.toml" > "$RUN/ringgate.log" 2>&1 &
    PIDS+=($!); TPID[ringgate]=$!
    wait_port "${PORT[ringgate]}"
    # The same gateway with the JSON access log on, for the access-log scenario.
    render "$HERE/gateway.toml" "${PORT[ringgate-log]}" "$RUN/ringgate-log.toml"
    printf '\n[access_log]\npath = "%s"\n' "$RUN/access.log" >> "$RUN/ringgate-log.toml"
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-log.toml" > "$RUN/ringgate-log.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-log]=$!
    wait_port "${PORT[ringgate-log]}"
    # The same gateway with a per-client-IP limit on every route, high enough
    # never to trigger, for the ratelimit-cost scenario.
    LIMITS='"loadtest"' render "$HERE/gateway.toml" "${PORT[ringgate-limited]}" "$RUN/ringgate-limited.toml"
    printf '\n[rate_limits.loadtest]\nkey = "client_ip"\nrate = "100000000/s"\nburst = 100000000\n' >> "$RUN/ringgate-limited.toml"
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-limited.toml" > "$RUN/ringgate-limited.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-limited]=$!
    wait_port "${PORT[ringgate-limited]}"
    # The same with one limit across all workers (node scope), never
    # triggering: the cost of the aggregation on the request path.
    LIMITS='"loadtest"' render "$HERE/gateway.toml" "${PORT[ringgate-node]}" "$RUN/ringgate-node.toml"
    printf '\n[rate_limits.loadtest]\nkey = "client_ip"\nscope = "node"\nrate = "100000000/s"\nburst = 100000000\n' >> "$RUN/ringgate-node.toml"
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-node.toml" > "$RUN/ringgate-node.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-node]=$!
    wait_port "${PORT[ringgate-node]}"
    # And one whose node-wide limit the load exceeds: admitted vs allowed.
    LIMITS='"capped"' render "$HERE/gateway.toml" "${PORT[ringgate-capped]}" "$RUN/ringgate-capped.toml"
    printf '\n[rate_limits.capped]\nkey = "global"\nscope = "node"\nrate = "%s/s"\nburst = %s\nheaders = false\n' "$CAP_RATE" "$CAP_BURST" >> "$RUN/ringgate-capped.toml"
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-capped.toml" > "$RUN/ringgate-capped.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-capped]=$!
    wait_port "${PORT[ringgate-capped]}"
    [ "$TLS_WANTED" = 1 ] && start_tls_targets
    [ "$AUTH_WANTED" = 1 ] && start_auth_target
    [ "$CACHE_WANTED" = 1 ] && start_cache_target
    [ "$POLICY_WANTED" = 1 ] && start_policy_target
    if [[ ",$PEERS," == *",nginx,"* ]]; then
        mkdir -p "$RUN/nginx-body" "$RUN/nginx-proxy"
        render "$HERE/peers/nginx.conf" "${PORT[nginx]}" "$RUN/nginx.conf"
        taskset -c "$GW_CPUS" nginx -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" > "$RUN/nginx.log" 2>&1 &
        PIDS+=($!); TPID[nginx]=$!
        wait_port "${PORT[nginx]}"
    fi
    if [[ ",$PEERS," == *",haproxy,"* ]]; then
        render "$HERE/peers/haproxy-http.cfg" "${PORT[haproxy]}" "$RUN/haproxy-http.cfg"
        taskset -c "$GW_CPUS" haproxy -db -f "$RUN/haproxy-http.cfg" > "$RUN/haproxy.log" 2>&1 &
        PIDS+=($!); TPID[haproxy]=$!
        render "$HERE/peers/haproxy-tcp.cfg" "${PORT[l4]}" "$RUN/haproxy-tcp.cfg"
        taskset -c "$GW_CPUS" haproxy -db -f "$RUN/haproxy-tcp.cfg" > "$RUN/l4.log" 2>&1 &
        PIDS+=($!); TPID[l4]=$!
        wait_port "${PORT[haproxy]}"
        wait_port "${PORT[l4]}"
    fi
}

# The same gateway with four protected routes: /jwt (RS256, cached),
# /jwt-fresh (RS256, a cache of one token: the auth-jwt-uncached scenario
# alternates two), /key (an API key among 10 000) and /opaque (token
# introspection at the stub's /introspect, cached). Tokens are signed
# with the openssl CLI (make_jwt.py); scenarios read them from the
# environment.
start_auth_target() {
    local dir="$RUN/auth" i
    mkdir -p "$dir"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rsa.key" 2>/dev/null
    openssl pkey -in "$dir/rsa.key" -pubout -out "$dir/rsa.pub" 2>/dev/null
    AUTH_TOKEN=$(python3 "$HERE/make_jwt.py" "$dir/rsa.key" loadtest-user)
    AUTH_TOKENS=$(python3 "$HERE/make_jwt.py" "$dir/rsa.key" user-a user-b | paste -sd, -)
    export AUTH_TOKENS
    AUTH_KEY=loadtest-key-4242
    echo "loadtest-client-secret" > "$dir/client-secret"
    python3 -c '
import hashlib, sys
for i in range(10000):
    print(hashlib.sha256(f"loadtest-key-{i}".encode()).hexdigest(), f"consumer-{i}")
' > "$dir/keys.txt"
    render "$HERE/gateway.toml" "${PORT[ringgate-auth]}" "$RUN/ringgate-auth.toml"
    cat >> "$RUN/ringgate-auth.toml" <<TOML

[auth.jwt]
type = "jwt"
keys = [{ alg = "RS256", pem_file = "$dir/rsa.pub" }]

[auth.jwt_fresh]
type = "jwt"
keys = [{ alg = "RS256", pem_file = "$dir/rsa.pub" }]
cache_size = 1

[auth.keys]
type = "api_key"
keys_file = "$dir/keys.txt"

[auth.opaque]
type = "introspection"
introspection_upstream = "stub"
client_id = "loadtest"
client_secret_file = "$dir/client-secret"

[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "stub"
auth = ["jwt"]

[[routes]]
name = "jwt-fresh"
path_prefix = "/jwt-fresh"
upstream = "stub"
auth = ["jwt_fresh"]

[[routes]]
name = "key"
path_prefix = "/key"
upstream = "stub"
auth = ["keys"]

[[routes]]
name = "opaque"
path_prefix = "/opaque"
upstream = "stub"
auth = ["opaque"]

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "stub"
TOML
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-auth.toml" > "$RUN/ringgate-auth.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-auth]=$!
    wait_port "${PORT[ringgate-auth]}"
}

# The same gateway with the response cache: /c/... is cached (the prefix
# stripped, so /c/api/items is the stub's /api/items, cached for an hour
# since the stub says nothing about caching), the plain routes proxy the
# same requests uncached, and /respond/... answers the stub's bodies
# directly. One process, so the cache-* scenarios' ratios isolate the
# cache. 8 MiB for the process, as nginx's proxy_cache gets.
start_cache_target() {
    render "$HERE/gateway.toml" "${PORT[ringgate-cache]}" "$RUN/ringgate-cache.toml"
    local sixteen_k
    sixteen_k=$(head -c 16384 /dev/zero | tr '\0' x)
    cat >> "$RUN/ringgate-cache.toml" <<TOML

[admin]
bind = "127.0.0.1:$CACHE_ADMIN_PORT"

[cache]
memory = "8MiB"
max_object = "1MiB"

[[routes]]
name = "cached"
path_prefix = "/c"
strip_prefix = true
upstream = "stub"
cache = { default_ttl = "1h" }

[[routes]]
name = "respond-small"
path = "/respond/small"
respond = { status = 200, content_type = "text/plain", body = "hello world\n" }

[[routes]]
name = "respond-16k"
path = "/respond/16k"
respond = { status = 200, content_type = "application/octet-stream", body = "$sixteen_k" }
TOML
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-cache.toml" > "$RUN/ringgate-cache.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-cache]=$!
    wait_port "${PORT[ringgate-cache]}"
}

# The same gateway with the edge policies on twin routes of one process:
# /plain/... proxies as the plain gateway does, /cors/... with a CORS
# policy (three exact origins and a subdomain pattern), /iprule/... behind
# an IP rule of 1 000 networks (loopback in the middle of the list),
# /gzip/... and /br/... compress with one encoding each (default levels),
# /aggregate/X calls the stub's X three times at once and merges them.
# The policy-* scenarios' ratios isolate each policy.
start_policy_target() {
    local dir="$RUN/policy"
    mkdir -p "$dir"
    python3 -c '
for i in range(1000):
    print(f"{11 + i // 250}.{i % 250}.{i % 7}.0/24")
    if i == 500:
        print("127.0.0.0/8")
' > "$dir/allow.txt"
    render "$HERE/gateway.toml" "${PORT[ringgate-policy]}" "$RUN/ringgate-policy.toml"
    cat >> "$RUN/ringgate-policy.toml" <<TOML

[cors.web]
origins = ["https://app.example.com", "https://admin.example.com", "http://localhost:3000", "https://*.example.org"]
credentials = true
expose_headers = ["x-request-id"]
max_age = "10m"

[ip_rules.partners]
allow_file = "$dir/allow.txt"

[[routes]]
name = "plain"
path_prefix = "/plain"
strip_prefix = true
upstream = "stub"

[[routes]]
name = "cors"
path_prefix = "/cors"
strip_prefix = true
upstream = "stub"
cors = "web"

[[routes]]
name = "iprule"
path_prefix = "/iprule"
strip_prefix = true
upstream = "stub"
ip_rule = "partners"

[[routes]]
name = "gzip"
path_prefix = "/gzip"
strip_prefix = true
upstream = "stub"
compress = { encodings = ["gzip"] }

[[routes]]
name = "br"
path_prefix = "/br"
strip_prefix = true
upstream = "stub"
compress = { encodings = ["br"] }

[[routes]]
name = "aggregate"
path_prefix = "/aggregate"
[routes.aggregate]
deadline = "5s"
[[routes.aggregate.backends]]
name = "a"
upstream = "stub"
path = "\${rest}"
key = "a"
[[routes.aggregate.backends]]
name = "b"
upstream = "stub"
path = "\${rest}"
key = "b"
[[routes.aggregate.backends]]
name = "c"
upstream = "stub"
path = "\${rest}"
key = "c"
TOML
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-policy.toml" > "$RUN/ringgate-policy.log" 2>&1 &
    PIDS+=($!); TPID[ringgate-policy]=$!
    wait_port "${PORT[ringgate-policy]}"
}

# ringgate-cache's lookups so far: "HITS MISSES" over all workers.
cache_counts() {
    local reply
    reply=$(exec 3<>"/dev/tcp/127.0.0.1/$CACHE_ADMIN_PORT" && printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 && cat <&3) || true
    awk '/^ringgate_cache_requests_total/ && /result="hit"/ {h += $2}
         /^ringgate_cache_requests_total/ && /result="miss"/ {m += $2}
         END {print h + 0, m + 0}' <<< "$reply"
}

# Self-signed ECDSA P-256 and RSA-2048 certificates for 127.0.0.1, shared by
# ringgate's and nginx's TLS listeners.
make_certs() {
    mkdir -p "$RUN/certs"
    local kind
    for kind in ecdsa rsa; do
        local key_args=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
        [ "$kind" = rsa ] && key_args=(-newkey rsa:2048)
        openssl req -x509 "${key_args[@]}" -nodes -days 7 -subj /CN=loadtest \
            -addext "subjectAltName=DNS:loadtest,IP:127.0.0.1" \
            -keyout "$RUN/certs/$kind.key" -out "$RUN/certs/$kind.pem" 2>/dev/null
    done
}

# One ringgate with three TLS listeners and, with nginx among the peers,
# one nginx with the same three: ECDSA with session resumption (tickets),
# then ECDSA and RSA with resumption off. Clients resume when they can (wrk
# and oha both do), so full handshakes are measured where neither server
# offers resumption, the same way on both.
start_tls_targets() {
    make_certs
    local p
    render "$HERE/gateway.toml" "${PORT[ringgate-tls-ecdsa]}" "$RUN/ringgate-tls.toml"
    awk -v dir="$RUN/certs" '{print} /^backlog/ && !done {print "[listeners.tls]\ncertificates = [{ cert = \"" dir "/ecdsa.pem\", key = \"" dir "/ecdsa.key\" }]"; done = 1}' \
        "$RUN/ringgate-tls.toml" > "$RUN/ringgate-tls.toml.new"
    mv "$RUN/ringgate-tls.toml.new" "$RUN/ringgate-tls.toml"
    for p in ecdsa-full rsa-full; do
        printf '\n[[listeners]]\nbind = "127.0.0.1:%s"\nbacklog = 4096\n[listeners.tls]\ncertificates = [{ cert = "%s", key = "%s" }]\nsession_tickets = false\n' \
            "${PORT[ringgate-tls-$p]}" "$RUN/certs/${p%-full}.pem" "$RUN/certs/${p%-full}.key" >> "$RUN/ringgate-tls.toml"
    done
    taskset -c "$GW_CPUS" "$RINGGATE" run -c "$RUN/ringgate-tls.toml" > "$RUN/ringgate-tls.log" 2>&1 &
    PIDS+=($!)
    for p in ecdsa ecdsa-full rsa-full; do TPID[ringgate-tls-$p]=$!; done
    for p in ecdsa ecdsa-full rsa-full; do wait_port "${PORT[ringgate-tls-$p]}"; done
    if [[ ",$PEERS," == *",nginx,"* ]]; then
        mkdir -p "$RUN/nginx-tls-body" "$RUN/nginx-tls-proxy"
        PORT2=${PORT[nginx-tls-ecdsa-full]} PORT3=${PORT[nginx-tls-rsa-full]} \
            render "$HERE/peers/nginx-tls.conf" "${PORT[nginx-tls-ecdsa]}" "$RUN/nginx-tls.conf"
        taskset -c "$GW_CPUS" nginx -e "$RUN/nginx-tls-error.log" -c "$RUN/nginx-tls.conf" > "$RUN/nginx-tls.log" 2>&1 &
        PIDS+=($!)
        for p in ecdsa ecdsa-full rsa-full; do TPID[nginx-tls-$p]=$!; done
        for p in ecdsa ecdsa-full rsa-full; do wait_port "${PORT[nginx-tls-$p]}"; done
    fi
}

stop_targets() {
    cleanup
    PIDS=()
    TPID=()
    sleep 0.5
}

# Sums a number read from /proc/PID/FILE by an awk program over a process and
# its children (nginx workers).
sum_over_tree() { # pid file awk-program
    local pid=$1 total=0 p
    for p in $pid $(pgrep -P "$pid" || true); do
        [ -r "/proc/$p/$2" ] || continue
        total=$((total + $(awk "$3" "/proc/$p/$2")))
    done
    echo "$total"
}
cpu_ticks() { sum_over_tree "$1" stat '{print $14 + $15}'; }
rss_kib() { sum_over_tree "$1" status '/^VmRSS/ {print $2}'; }

run_one() { # scenario target round
    local scenario=$1 target=$2 round=$3
    local DESCRIPTION="" TOOL=wrk REQUEST_PATH=/ CONNECTIONS=64 WRK_SCRIPT="" HEADER="" FIXED_RATE=0 HOLD_IDLE=0 TARGETS_ONLY= LIMITED=0 TLS="" OPEN_PATH=/open/items PROXIED_PATH=/ DIRECT_PATH=/ BODY_KIB=
    # shellcheck disable=SC1090
    source "$HERE/scenarios/$scenario.sh"
    # HTTPS scenarios: "ringgate" and "nginx" name their TLS processes
    # (reported under the plain names, so ratios compare like with like).
    local process=$target scheme=http
    if [ -n "$TLS" ]; then process="$target-tls-$TLS"; scheme=https; fi
    # The auth scenarios' baseline: the same gateway process, an
    # unprotected twin route (so the ratio isolates authentication).
    # The cache scenarios' twins: the cached route's process, proxying
    # uncached or answering directly; nginx with its proxy_cache location.
    case $target in
        ringgate-open) process=ringgate-auth; REQUEST_PATH=$OPEN_PATH ;;
        ringgate-proxied) process=ringgate-cache; REQUEST_PATH=$PROXIED_PATH ;;
        ringgate-direct) process=ringgate-cache; REQUEST_PATH=$DIRECT_PATH ;;
        nginx-cache) process=nginx ;;
        ringgate-plain|ringgate-cors|ringgate-iprule|ringgate-gzip|ringgate-br|ringgate-aggregate) process=ringgate-policy; REQUEST_PATH="/${target#ringgate-}$REQUEST_PATH" ;;
    esac
    local url="$scheme://127.0.0.1:${PORT[$process]}$REQUEST_PATH"
    local raw="$RAW/$scenario.$target.$round"
    local pid=${TPID[$process]}
    local holder="" rss_before="" rss_after=""
    if [ "$HOLD_IDLE" = 1 ]; then
        rss_before=$(rss_kib "$pid")
        mkfifo "$raw.hold"
        python3 "$HERE/idle_conns.py" 127.0.0.1 "${PORT[$process]}" "$IDLE" $([ -n "$TLS" ] && echo --tls) < "$raw.hold" > "$raw.holder" 2>&1 &
        holder=$!
        PIDS+=("$holder")
        exec {HOLDFD}>"$raw.hold"
        local i
        for i in $(seq 1 600); do grep -q ready "$raw.holder" 2>/dev/null && break; sleep 0.1; done
        grep -q ready "$raw.holder" || { log "idle holder failed: $(cat "$raw.holder")"; exit 1; }
        sleep 0.5
        rss_after=$(rss_kib "$pid")
    fi
    local ticks_before ticks_after counts_before="" counts_after=""
    [ "$target" = ringgate-cache ] && counts_before=$(cache_counts)
    ticks_before=$(cpu_ticks "$pid")
    if [ "$TOOL" = oha ]; then
        local rate_args=()
        [ "$FIXED_RATE" = 1 ] && rate_args=(-q "$RATE" --latency-correction)
        taskset -c "$GEN_CPUS" oha --no-tui --output-format json -z "$DURATION" -c "$CONNECTIONS" \
            "${rate_args[@]}" "$url" > "$raw.json" 2> "$raw.err" || true
    else
        local args=(-t "$GEN_THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency)
        [ -n "$WRK_SCRIPT" ] && args+=(-s "$HERE/lua/$WRK_SCRIPT")
        [ -n "$HEADER" ] && args+=(-H "$HEADER")
        taskset -c "$GEN_CPUS" wrk "${args[@]}" "$url" > "$raw.txt" 2> "$raw.err" || true
    fi
    ticks_after=$(cpu_ticks "$pid")
    [ "$target" = ringgate-cache ] && counts_after=$(cache_counts)
    if [ -n "$holder" ]; then
        exec {HOLDFD}>&-
        wait "$holder" 2>/dev/null || true
        rm -f "$raw.hold"
    fi
    {
        echo "scenario=$scenario"; echo "target=$target"; echo "round=$round"; echo "tool=$TOOL"
        echo "cpu_ticks=$((ticks_after - ticks_before))"; echo "clk_tck=$(getconf CLK_TCK)"
        echo "workers=$WORKERS"; echo "idle_connections=$([ "$HOLD_IDLE" = 1 ] && echo "$IDLE" || echo 0)"
        echo "rss_before_kib=$rss_before"; echo "rss_after_kib=$rss_after"
        [ "$LIMITED" = 1 ] && { echo "limit_rate=$CAP_RATE"; echo "limit_burst=$CAP_BURST"; }
        if [ -n "$counts_after" ]; then
            read -r hb mb <<< "$counts_before"; read -r ha ma <<< "$counts_after"
            echo "cache_hits=$((ha - hb))"; echo "cache_misses=$((ma - mb))"
        fi
        [ -n "$BODY_KIB" ] && echo "body_kib=$BODY_KIB"
        echo "description=$DESCRIPTION"
    } > "$raw.meta"
    # Keep the results folder small: the log's content is not the point.
    [ "$target" = ringgate-log ] && : > "$RUN/access.log"
    log "$scenario $target round $round done"
}

scenario_targets() { # scenario → the targets it runs against
    local TARGETS_ONLY=""
    # shellcheck disable=SC1090
    source "$HERE/scenarios/$1.sh"
    if [ -n "$TARGETS_ONLY" ]; then
        # Peers only where this run started them (--quick starts none).
        local t
        for t in $TARGETS_ONLY; do
            case $t in
                nginx|haproxy|l4|direct) [[ " ${TARGETS[*]} " == *" $t "* ]] || continue ;;
                nginx-*) [[ " ${TARGETS[*]} " == *" nginx "* ]] || continue ;;
            esac
            echo "$t"
        done
    else
        echo "${TARGETS[@]}"
    fi
}

TARGETS=(ringgate)
[[ ",$PEERS," == *",nginx,"* ]] && TARGETS+=(nginx)
[[ ",$PEERS," == *",haproxy,"* ]] && TARGETS+=(haproxy l4)
[ "$QUICK" = 1 ] || TARGETS+=(direct)

run_suite() {
    start_targets
    local round scenario target
    for round in $(seq 1 "$ROUNDS"); do
        for scenario in ${SCENARIOS//,/ }; do
            [ -f "$HERE/scenarios/$scenario.sh" ] || { log "unknown scenario $scenario"; exit 2; }
            for target in $(scenario_targets "$scenario"); do
                # The upstream alone has no idle-connection figure worth holding 10k for.
                [ "$target" = direct ] && [ "$scenario" = idle-10k ] && continue
                run_one "$scenario" "$target" "$round"
            done
        done
    done
    stop_targets
}

{
    echo "date=$(date -u +%FT%TZ)"; echo "host=$(hostname)"; echo "cpus=$NCPU"
    echo "kernel=$(uname -r)"; echo "duration=$DURATION"; echo "rounds=$ROUNDS"; echo "rate=$RATE"
    echo "scenarios=$SCENARIOS"; echo "workers=${SCALING:-$WORKERS}"; echo "idle=$IDLE"
    echo "ringgate=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*\///' || true)"; echo "haproxy=$(haproxy -v 2>/dev/null | head -1 | awk '{print $3}' || true)"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"; echo "oha=$OHA_VERSION"
} > "$OUT/environment.txt"

if [ -n "$SCALING" ]; then
    for w in ${SCALING//,/ }; do
        WORKERS=$w
        RAW="$OUT/raw/workers-$w"; RUN="$OUT/run/workers-$w"; mkdir -p "$RAW" "$RUN"
        log "scaling run with $w workers"
        run_suite
    done
    RAW="$OUT/raw"
else
    run_suite
fi

python3 "$HERE/report.py" "$OUT" $([ "$QUICK" = 1 ] && echo --check)
log "results in $OUT"
