#!/usr/bin/env bash
# icp-gate TLS load harness: a `protocol = "tls"` listener of icp-gate against nginx `stream`
# with `ssl_preread` and a `map` of the same registry, and against a floor (proxy/examples/floor.rs:
# the alert written after one read; a plain relay), on one machine, in one run, logs on for
# the gate and nginx as operators run them. Three paths: refusals of an unfiled SNI (a ClientHello replayer, no client crypto), new
# TLS connections through to a TLS origin (h2load, one request per connection), and requests over
# kept-alive TLS connections through the passthrough (h2load).
# What it measures and how to read the output: benches/load/README.md, section "TLS passthrough".
#
#   benches/load/tls.sh                      # 3 rounds of 10 s per (proxy, path)
#   ROUNDS=5 DURATION=30 benches/load/tls.sh
#   PATHS=refuse ROUNDS=1 DURATION=3 benches/load/tls.sh
#
# Environment (defaults in brackets): ROUNDS [3], DURATION seconds per run [10], WARMUP seconds
# per (proxy, path) before round 1 [2], PATHS [refuse newconn keepalive], RECORDS [1000000],
# BASE_PORT [18440] (uses BASE_PORT..BASE_PORT+6), PROXY_CPU [0], LOAD_CPU [1],
# REFUSE_CONNECTIONS [64], REFUSE_HELLO [classic: or pq], NEWCONN_CLIENTS [32],
# KEEPALIVE_CLIENTS [64], BLOCK_HOST
# [unfiled-load-test.cn], FORWARD_HOST [a connected name from the registry], SKIP_BUILD [0],
# KEEP_TMP [0], RESULTS [benches/load/results-tls-latest.txt], LOGS [on: see lib.sh; the gate's
# access and audit logs to files, nginx's stream access_log buffer=64k], FLOOR [1] (0: no floor),
# SUMMARY [none: a file to append the machine-readable summary to, see lib.sh].
#
# It installs nothing. Everything runs on 127.0.0.1 in a temporary directory; every process
# started here is stopped when the script exits, however it exits.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PATHS=${PATHS:-refuse newconn keepalive}
RECORDS=${RECORDS:-1000000}
BASE_PORT=${BASE_PORT:-18440}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REFUSE_CONNECTIONS=${REFUSE_CONNECTIONS:-64}
REFUSE_HELLO=${REFUSE_HELLO:-classic}
NEWCONN_CLIENTS=${NEWCONN_CLIENTS:-32}
KEEPALIVE_CLIENTS=${KEEPALIVE_CLIENTS:-64}
BLOCK_HOST=${BLOCK_HOST:-unfiled-load-test.cn}
FORWARD_HOST=${FORWARD_HOST:-}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-$HERE/results-tls-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

note() { echo "tls.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Checks before anything is started.

require_integers ROUNDS DURATION WARMUP RECORDS BASE_PORT PROXY_CPU LOAD_CPU REFUSE_CONNECTIONS \
    NEWCONN_CLIENTS KEEPALIVE_CLIENTS
check_logs
check_floor
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((DURATION >= 1)) || die "DURATION must be at least 1 second"
((BASE_PORT >= 1024 && BASE_PORT <= 65529)) || die "BASE_PORT must be from 1024 to 65529"
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must be different cores"
((REFUSE_CONNECTIONS >= 1 && NEWCONN_CLIENTS >= 1 && KEEPALIVE_CLIENTS >= 1)) ||
    die "REFUSE_CONNECTIONS, NEWCONN_CLIENTS and KEEPALIVE_CLIENTS must be at least 1"
[[ $REFUSE_HELLO == classic || $REFUSE_HELLO == pq ]] ||
    die "REFUSE_HELLO must be classic or pq (got '$REFUSE_HELLO')"
for p in $PATHS; do
    [[ $p == refuse || $p == newconn || $p == keepalive ]] ||
        die "PATHS may hold refuse, newconn and keepalive (got '$p')"
done
[[ $BLOCK_HOST =~ ^[a-z0-9.-]+$ ]] || die "BLOCK_HOST must be a lower-case ASCII host name"

require_tools "apt-get install -y nginx libnginx-mod-stream nghttp2-client openssl util-linux curl" \
    nginx h2load openssl taskset curl awk
[[ -f $STREAM_MODULE ]] || die "$STREAM_MODULE not found (apt-get install -y libnginx-mod-stream)"
nginx -V 2>&1 | grep -q -- '--with-stream_ssl_preread_module' ||
    die "this nginx has no stream ssl_preread module"
if [[ $SKIP_BUILD != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set SKIP_BUILD=1 with binaries already built in $TARGET_DIR/release)"
fi

CPUS=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
((PROXY_CPU < CPUS && LOAD_CPU < CPUS)) ||
    die "PROXY_CPU=$PROXY_CPU and LOAD_CPU=$LOAD_CPU must be below the number of CPUs ($CPUS)"

GATE_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
ORIGIN_PORT=$((BASE_PORT + 3))
CAPTURE_PORT=$((BASE_PORT + 4))
FLOOR_REFUSE_PORT=$((BASE_PORT + 5))
FLOOR_RELAY_PORT=$((BASE_PORT + 6))
PORTS=("$GATE_PORT" "$ADMIN_PORT" "$NGINX_PORT" "$ORIGIN_PORT" "$CAPTURE_PORT")
((FLOOR == 1)) && PORTS+=("$FLOOR_REFUSE_PORT" "$FLOOR_RELAY_PORT")
for port in "${PORTS[@]}"; do
    if port_in_use "$port"; then
        die "127.0.0.1:$port is already in use (the harness uses BASE_PORT..BASE_PORT+6; set BASE_PORT)"
    fi
done
warn_if_busy note

# ---------------------------------------------------------------------------------------------
# Temporary directory; every process started below is stopped on exit (stop_all in lib.sh).

TMP=$(mktemp -d "${TMPDIR:-/tmp}/icp-gate-tls.XXXXXX")
chmod 755 "$TMP" # nginx workers run as nobody when the harness runs as root
PROCS=()         # "name pid signal"
LOAD_PID=        # the load generator in progress, if any

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${LOAD_PID:-} ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
    stop_all note
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then
        note "kept $TMP (configurations, logs, hellos, raw load output)"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Build.

GATE=$TARGET_DIR/release/icp-gate
REPLAY=$TARGET_DIR/release/examples/hello_replay
FLOOR_BIN=$TARGET_DIR/release/examples/floor
if [[ $SKIP_BUILD != 1 ]]; then
    note "building icp-gate and the hello_replay and floor examples (release)"
    (cd "$ROOT" && cargo build --release -q -p icp-gate --bin icp-gate &&
        cargo build --release -q -p icp-gate-proxy --example hello_replay --example floor)
fi
[[ -x $GATE ]] || die "$GATE not found: run cargo build --release"
[[ -x $REPLAY ]] || die "$REPLAY not found: run cargo build --release -p icp-gate-proxy --example hello_replay"
if ((FLOOR == 1)); then
    [[ -x $FLOOR_BIN ]] || die "$FLOOR_BIN not found: run cargo build --release -p icp-gate-proxy --example floor (or FLOOR=0)"
fi

# ---------------------------------------------------------------------------------------------
# Registry: one synthetic snapshot for the gate, converted to an nginx map for nginx.

registry_with_map
if awk -F '\t' -v h="$BLOCK_HOST" '$1 == h { found = 1 } END { exit !found }' "$REGISTRY"; then
    die "BLOCK_HOST $BLOCK_HOST is in the registry: pick a name that is not"
fi

# ---------------------------------------------------------------------------------------------
# The TLS origin: nginx, ECDSA P-256 certificate for FORWARD_HOST, TLS 1.3 only, HTTP/1.1 and
# h2, a small fixed 200 body, keep-alive without a request limit; on the load core.

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/origin.key" -out "$TMP/origin.crt" -subj "/CN=$FORWARD_HOST" \
    -addext "subjectAltName=DNS:$FORWARD_HOST" >/dev/null 2>&1 || die "openssl could not make the origin's certificate"
mkdir -p "$TMP/origin"
{
    nginx_preamble "$TMP/origin"
    cat <<CONF
    server {
        listen 127.0.0.1:$ORIGIN_PORT ssl http2 backlog=4096;
        ssl_certificate $TMP/origin.crt;
        ssl_certificate_key $TMP/origin.key;
        ssl_protocols TLSv1.3;
        location / {
            default_type text/plain;
            return 200 "$ORIGIN_BODY\n";
        }
    }
}
CONF
} >"$TMP/origin/nginx.conf"
note "starting the TLS origin (nginx) on 127.0.0.1:$ORIGIN_PORT, cpu $LOAD_CPU"
start origin TERM "$LOAD_CPU" nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
ORIGIN_PID=$STARTED_PID
wait_until origin "$ORIGIN_PID" 60 curl -skf -o /dev/null -m 2 "https://127.0.0.1:$ORIGIN_PORT/"

# ---------------------------------------------------------------------------------------------
# icp-gate: one `tls` listener, one thread, logging as LOGS says (lib.sh: by default its access
# log and audit log to files, as an operator runs it: a refusal gets an audit line and an access
# line, a passed-through connection an access line when it ends); its standard error to a file.

cat >"$TMP/icp-gate.toml" <<CONF
[[listener]]
name = "tls"
address = "127.0.0.1:$GATE_PORT"
protocol = "tls"
require = "connected"
mode = "enforce"
upstream = ["127.0.0.1:$ORIGIN_PORT"]
refuse = "alert"
client_hello_timeout_seconds = 10

$(gate_common_sections "$TMP" "$REGISTRY" "$ADMIN_PORT")
CONF
note "starting icp-gate on 127.0.0.1:$GATE_PORT (admin $ADMIN_PORT), cpu $PROXY_CPU, log $TMP/icp-gate.out"
start_gate_ready "$TMP/icp-gate.toml" "$PROXY_CPU" "$ADMIN_PORT"

# ---------------------------------------------------------------------------------------------
# nginx under test: stream, ssl_preread, the registry as a hostnames map on the SNI. A filed
# (connected) name goes to the origin; any other name, or none, to a local refusing server.

NGX=$TMP/nginx
mkdir -p "$NGX"
REFUSE_SOCK=$NGX/refuse.sock
{
    echo "load_module $STREAM_MODULE;"
    nginx_preamble "$NGX"
    # The refusing server. nginx 1.22 has ssl_reject_handshake in http only (stream got it in
    # 1.25.5), and a stream `return` of the 7 alert bytes stops at their NUL byte: a local http
    # server on a unix socket, where OpenSSL reads the hello and answers it with the fatal
    # unrecognized_name alert, and nothing else (no certificate, no access log).
    cat <<CONF
    server {
        listen unix:$REFUSE_SOCK ssl backlog=4096;
        ssl_reject_handshake on;
        # nginx 1.22's default leaves out TLS 1.3: a 1.3-only hello would get protocol_version.
        ssl_protocols TLSv1.2 TLSv1.3;
    }
CONF
    cat <<CONF
}
stream {
    log_format sni '\$remote_addr [\$time_local] sni=\$ssl_preread_server_name '
                   'upstream=\$upstream_addr status=\$status sent=\$bytes_sent '
                   'received=\$bytes_received time=\$session_time';
$([[ $LOGS == off ]] && echo "    access_log off;" || echo "    access_log $NGX/access.log sni buffer=64k;")
    map_hash_max_size 4194304;
    map_hash_bucket_size 128;
    map \$ssl_preread_server_name \$icp_block {
        hostnames;
        default 1;
        include $TMP/nginx-map.conf;
    }
    map \$icp_block \$icp_backend {
        0 127.0.0.1:$ORIGIN_PORT;
        default unix:$REFUSE_SOCK;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        ssl_preread on;
        preread_timeout 10s;
        proxy_connect_timeout 3s;
        proxy_timeout 600s;
        proxy_pass \$icp_backend;
    }
CONF
    echo "}"
} >"$NGX/nginx.conf"
note "starting nginx (stream, ssl_preread, refusal: ssl_reject_handshake behind a unix socket) on 127.0.0.1:$NGINX_PORT, cpu $PROXY_CPU"
touch "$NGX/access.log" # (none with LOGS=off)
start nginx TERM "$PROXY_CPU" nginx -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf"
NGINX_PID=$STARTED_PID
wait_until nginx "$NGINX_PID" 120 port_in_use "$NGINX_PORT"

# ---------------------------------------------------------------------------------------------
# The floor: `floor refuse` (one read, the 7 alert bytes, a close) for the refusals, `floor relay`
# (a plain copy both ways to the same origin) for the passthrough paths; checked below as the
# proxies are.

if ((FLOOR == 1)); then
    note "starting the floor (refuse on 127.0.0.1:$FLOOR_REFUSE_PORT, relay on 127.0.0.1:$FLOOR_RELAY_PORT), cpu $PROXY_CPU"
    start floor-refuse TERM "$PROXY_CPU" "$FLOOR_BIN" refuse "127.0.0.1:$FLOOR_REFUSE_PORT"
    FLOOR_REFUSE_PID=$STARTED_PID
    start floor-relay TERM "$PROXY_CPU" "$FLOOR_BIN" relay "127.0.0.1:$FLOOR_RELAY_PORT" "127.0.0.1:$ORIGIN_PORT"
    FLOOR_RELAY_PID=$STARTED_PID
    wait_for_listening() { grep -q listening "$TMP/$1.out"; }
    wait_until floor-refuse "$FLOOR_REFUSE_PID" 10 wait_for_listening floor-refuse
    wait_until floor-relay "$FLOOR_RELAY_PID" 10 wait_for_listening floor-relay
fi

# ---------------------------------------------------------------------------------------------
# ClientHellos for the replayer, captured from openssl s_client (SNI BLOCK_HOST).

# wait_for_line FILE TEXT: waits (5 s at most) until FILE holds TEXT (a connection to test the
# capture's port would be the one connection it captures).
wait_for_line() {
    local i
    for ((i = 0; i < 50; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "no '$2' in $1 within 5 s: $(cat "$1")"
}

# capture_hello NAME OPENSSL_ARGS...: TMP/hello-NAME.bin, the hello s_client sends.
capture_hello() {
    local name=$1 i
    shift
    "$REPLAY" capture "127.0.0.1:$CAPTURE_PORT" "$TMP/hello-$name.bin" >"$TMP/capture-$name.out" 2>&1 &
    local cap=$!
    wait_for_line "$TMP/capture-$name.out" listening
    timeout 10 openssl s_client -connect "127.0.0.1:$CAPTURE_PORT" -servername "$BLOCK_HOST" "$@" \
        </dev/null >"$TMP/s_client-$name.out" 2>&1 || true
    wait "$cap" || die "capturing the $name hello failed: $(cat "$TMP/capture-$name.out")"
    grep -qF "$BLOCK_HOST" "$TMP/hello-$name.bin" || die "the $name hello does not carry the SNI $BLOCK_HOST"
}
# Classic: what OpenSSL sends with the padding extension on (-bugs), as browsers do: 517 bytes.
capture_hello classic -tls1_3 -bugs -alpn h2,http/1.1
# Post-quantum-sized: this OpenSSL (3.0) has no ML-KEM, so a hybrid key share of the same
# size class is imitated by an ffdhe8192 key share (1024 bytes; X25519MLKEM768's is 1216) and
# a longer ALPN list, for about 1.8 KB.
PQ_GROUPS=ffdhe8192
if openssl list -kem-algorithms 2>/dev/null | grep -qi mlkem768; then PQ_GROUPS=X25519MLKEM768; fi
capture_hello pq -tls1_3 -groups "$PQ_GROUPS" \
    -alpn "h2,http/1.1,$(printf 'x-pad-%03d,' $(seq 1 40) | sed 's/,$//')"
CLASSIC_BYTES=$(wc -c <"$TMP/hello-classic.bin")
PQ_BYTES=$(wc -c <"$TMP/hello-pq.bin")
HELLO=$TMP/hello-$REFUSE_HELLO.bin

# The SNI h2load sends when connecting by IP to https://FORWARD_HOST:PORT/ (--connect-to).
"$REPLAY" capture "127.0.0.1:$CAPTURE_PORT" "$TMP/hello-h2load.bin" >"$TMP/capture-h2load.out" 2>&1 &
cap=$!
wait_for_line "$TMP/capture-h2load.out" listening
timeout 10 h2load --h1 -n 1 -c 1 --connect-to "127.0.0.1:$CAPTURE_PORT" "https://$FORWARD_HOST:$CAPTURE_PORT/" \
    >/dev/null 2>&1 || true
wait "$cap" || die "capturing h2load's hello failed: $(cat "$TMP/capture-h2load.out")"
grep -qF "$FORWARD_HOST" "$TMP/hello-h2load.bin" || die "h2load does not send the SNI $FORWARD_HOST"

# ---------------------------------------------------------------------------------------------
# Before any load: a filed SNI completes a handshake and a request through both proxies, an
# unfiled one gets exactly the alert from both, with both hellos.

CHECKS=("icp-gate $GATE_PORT $GATE_PORT" "nginx $NGINX_PORT $NGINX_PORT")
((FLOOR == 1)) && CHECKS+=("floor $FLOOR_RELAY_PORT $FLOOR_REFUSE_PORT")
for entry in "${CHECKS[@]}"; do
    read -r name pass_port port <<<"$entry"
    body=$(curl -sk -m 5 --resolve "$FORWARD_HOST:$pass_port:127.0.0.1" "https://$FORWARD_HOST:$pass_port/" || true)
    [[ $body == "$ORIGIN_BODY" ]] || die "$name: no TLS handshake and answer through the passthrough for $FORWARD_HOST (got '$body')"
    for kind in classic pq; do
        "$REPLAY" replay "127.0.0.1:$port" "$TMP/hello-$kind.bin" --expect alert --connections 1 --duration 0.2 \
            >"$TMP/check-$name-$kind.out" 2>&1 ||
            die "$name: the $kind hello for $BLOCK_HOST did not get exactly the alert: $(tr '\n' ' ' <"$TMP/check-$name-$kind.out")"
    done
    s_client=$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$BLOCK_HOST" </dev/null 2>&1 || true)
    grep -q 'unrecognized name' <<<"$s_client" || die "$name: openssl s_client did not see the unrecognized_name alert for $BLOCK_HOST"
done

# ---------------------------------------------------------------------------------------------
# Load.

# gate_tls_counter DECISION REASON: the gate's icp_gate_tls_connections_total of the listener.
gate_tls_counter() {
    curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v d="$1" -v r="$2" '
            index($0, "icp_gate_tls_connections_total{") == 1 && index($0, "decision=\"" d "\"") &&
                index($0, "listener=\"tls\"") && index($0, "reason=\"" r "\"") { v = $NF }
            END { printf "%d\n", v }'
}

# h2load output -> "req/s done succeeded failed+errored+timeout 2xx mean-time-for-request(us)"
parse_h2load() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return (v + 0) * 1000
            if (v ~ /s$/) return (v + 0) * 1000000
            return v + 0
        }
        /^finished in/ { rps = $4 }
        /^requests:/ { done = $6; ok = $8; bad = $10 + $12 + $14 }
        /^status codes:/ { s2 = $3 }
        /^time for request:/ { mean = us($6) }
        END { printf "%s %d %d %d %d %d\n", rps, done, ok, bad, s2, mean }' "$1"
}

# The longest a load generator may run before it is killed and the run is a PROBLEM: h2load's
# -D has been seen to run on for good when its clients completed their connections only after
# the duration was over (on a loaded machine), instead of stopping.
LOAD_LIMIT=$((DURATION * 10 + 60))
ANOMALIES=()
ROUND_LINES=()
RAW=$TMP/rounds.tsv
: >"$RAW"
NEWCONN_REQUESTS=0 # requests per new-connection run, set from the warm-up's rate
GATE_AUDIT=$TMP/gate-audit.log
GATE_ACCESS=$TMP/gate-access.log

# gate_files_settled: waits (5 s at most) until the gate's log files stop growing (a connection
# of the run before may still have its line to write), then empties them (a round writes
# gigabytes; the writers append).
gate_files_settled() {
    local i last="" now
    for ((i = 0; i < 25; i++)); do
        now="$(wc -l <"$GATE_AUDIT") $(wc -l <"$GATE_ACCESS")"
        [[ $now == "$last" ]] && break
        last=$now
        sleep 0.2
    done
    : >"$GATE_AUDIT"
    : >"$GATE_ACCESS"
}

# gate_file_lines AUDIT ACCESS: waits (5 s at most) until the gate's files hold at least AUDIT
# and ACCESS lines, then a little more (anything beyond would show), and prints their counts.
gate_file_lines() {
    local i audited accessed
    for ((i = 0; i < 50; i++)); do
        audited=$(wc -l <"$GATE_AUDIT") accessed=$(wc -l <"$GATE_ACCESS")
        ((audited >= $1 && accessed >= $2)) && break
        sleep 0.1
    done
    sleep 0.3
    echo "$(wc -l <"$GATE_AUDIT") $(wc -l <"$GATE_ACCESS")"
}

# load ROUND PROXY PATH: one run; ROUND "warmup" is not recorded.
load() {
    local round=$1 proxy=$2 path=$3 port pid log out before after
    case $proxy in
        icp-gate) port=$GATE_PORT pid=$GATE_PID log=$TMP/icp-gate.out ;;
        nginx) port=$NGINX_PORT pid=$NGINX_PID log=$NGX/error.log ;;
        floor)
            if [[ $path == refuse ]]; then
                port=$FLOOR_REFUSE_PORT pid=$FLOOR_REFUSE_PID log=$TMP/floor-refuse.out
            else
                port=$FLOOR_RELAY_PORT pid=$FLOOR_RELAY_PID log=$TMP/floor-relay.out
            fi
            ;;
    esac
    local secs=$DURATION
    [[ $round == warmup ]] && secs=$WARMUP
    out=$TMP/load-$round-$proxy-$path.txt
    local log_before access_before c0=0 c1 sleeps0 ticks0
    [[ $proxy == icp-gate && $LOGS == on ]] && gate_files_settled
    log_before=$(wc -l <"$log")
    access_before=$(wc -l <"$NGX/access.log")
    if [[ $proxy == icp-gate ]]; then
        if [[ $path == refuse ]]; then c0=$(gate_tls_counter blocked unfiled); else c0=$(gate_tls_counter allowed ""); fi
    fi
    sleeps0=$(proxy_sleeps "$pid")
    ticks0=$(proc_ticks "$pid")
    before=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    # In the background and waited for, so that a signal to the script is acted on at once.
    case $path in
        refuse)
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" "$REPLAY" replay "127.0.0.1:$port" "$HELLO" --expect alert \
                --connections "$REFUSE_CONNECTIONS" --duration "$secs" >"$out" 2>&1 &
            ;;
        newconn)
            # One request per connection: the origin closes after `Connection: close` and
            # h2load opens the next connection (h2load's -D does not reconnect: a count, -n).
            local n=$NEWCONN_REQUESTS
            [[ $round == warmup ]] && n=$((NEWCONN_CLIENTS * 20))
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" h2load --h1 -H 'Connection: close' -n "$n" -c "$NEWCONN_CLIENTS" -m 1 \
                --connect-to "127.0.0.1:$port" "https://$FORWARD_HOST:$port/" >"$out" 2>&1 &
            ;;
        keepalive)
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" h2load --h1 -D "$secs" -c "$KEEPALIVE_CLIENTS" -m 1 \
                --connect-to "127.0.0.1:$port" "https://$FORWARD_HOST:$port/" >"$out" 2>&1 &
            ;;
    esac
    LOAD_PID=$!
    local load_rc=0
    wait "$LOAD_PID" || load_rc=$?
    LOAD_PID=
    local timed_out=0
    ((load_rc == 124 || load_rc == 137)) && timed_out=1
    after=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    local sleeps ticks
    ticks=$(($(proc_ticks "$pid") - ticks0))
    sleeps=$(($(proxy_sleeps "$pid") - sleeps0))
    sleep 0.3 # let the proxies log what happened when the load generator closed its connections

    local rate answered lat problems=() unit
    ((timed_out == 0)) || problems+=("the load generator had not finished after ${LOAD_LIMIT}s: killed")
    if [[ $path == refuse ]]; then
        unit="refusals/s"
        rate=$(sed -n 's/.*\brate=\([0-9.]*\).*/\1/p' "$out")
        answered=$(sed -n 's/.*\bcompleted=\([0-9]*\).*/\1/p' "$out")
        lat=$(sed -n 's/.*\bp50_us=\([0-9]*\).*/\1/p' "$out")
        secs=$(sed -n 's/.*\bseconds=\([0-9.]*\).*/\1/p' "$out")
        if [[ -z $rate || -z $answered ]]; then
            problems+=("replayer output unreadable: $(tr '\n' ' ' <"$out" | head -c 300)")
            rate=0 answered=0 lat=0
        elif ((load_rc != 0 && timed_out == 0)); then
            problems+=("replayer: $(tr '\n' ' ' <"$out" | head -c 400)")
        fi
    else
        local ok bad s2
        read -r rate answered ok bad s2 lat <<<"$(parse_h2load "$out")"
        [[ $path == newconn ]] && unit="conn/s" || unit="req/s"
        if [[ -z $rate || $rate == 0 ]]; then
            problems+=("h2load output unreadable: $(tr '\n' ' ' <"$out" | head -c 300)")
            rate=0 answered=0 lat=0
        else
            secs=$(awk -v d="$answered" -v r="$rate" 'BEGIN { printf "%.3f", d / r }')
            ((bad == 0 && ok == answered && s2 == answered)) ||
                problems+=("h2load: $answered done, $ok succeeded, $bad failed/errored/timed out, $s2 2xx")
        fi
        # (The floor's warm-up does not size the runs: they last about DURATION for the gate and nginx.)
        [[ $round == warmup && $path == newconn && $proxy != floor ]] &&
            NEWCONN_WARM_RATE=$(awk -v a="${NEWCONN_WARM_RATE:-0}" -v b="$rate" 'BEGIN { print (b > a) ? b : a }')
    fi
    [[ $round == warmup ]] && return 0

    kill -0 "$pid" 2>/dev/null || problems+=("$proxy is no longer running")
    # The gate counts a connection when it decides it. Refusals: every connection the replayer
    # opened was decided (it waits for the answers in flight). New connections: one decision
    # per h2load request. Kept-alive: one decision per h2load client.
    local logged counted=""
    logged=$(tail -n +$((log_before + 1)) "$log")
    if [[ $proxy == icp-gate ]] && kill -0 "$pid" 2>/dev/null; then
        if [[ $path == refuse ]]; then c1=$(gate_tls_counter blocked unfiled); else c1=$(gate_tls_counter allowed ""); fi
        counted=$((c1 - c0))
        local lo=$answered hi=$answered
        case $path in
            refuse) hi=$((answered + REFUSE_CONNECTIONS)) ;;
            newconn) hi=$((answered + NEWCONN_CLIENTS)) ;;
            keepalive) lo=$KEEPALIVE_CLIENTS hi=$KEEPALIVE_CLIENTS ;;
        esac
        ((counted >= lo && counted <= hi)) ||
            problems+=("the gate counted $counted $path decisions, expected $lo to $hi")
        if [[ $LOGS == on ]]; then
            # Every refusal has its audit line and its access line; every connection passed
            # through its access line (when it ended); no passed connection has an audit line.
            local want_audit=0 audited accessed
            [[ $path == refuse ]] && want_audit=$counted
            read -r audited accessed <<<"$(gate_file_lines "$want_audit" "$counted")"
            ((audited == want_audit)) ||
                problems+=("AUDIT LOG MISMATCH: $audited audit lines for $want_audit refusals the gate counted")
            ((accessed == counted)) ||
                problems+=("access log: $accessed lines for $counted connections the gate counted")
            GATE_LINES="audit $audited, access $accessed"
        elif [[ $LOGS == stderr && $path == refuse ]]; then
            # Its refusal line on standard error: one per refused connection.
            local lines
            lines=$(grep -c 'tls connection refused' <<<"$logged" || true)
            ((lines == counted)) || problems+=("the gate logged $lines refusals for $counted counted")
        fi
    fi
    local others
    others=$(grep -v 'tls connection refused' <<<"$logged" | grep -ciE ' (WARN|ERROR) |panic|\[(error|crit|alert|emerg)\]' || true)
    if ((others > 0)); then
        problems+=("$proxy logged $others warning/error lines, first: $(grep -v 'tls connection refused' <<<"$logged" |
            grep -iE -m1 ' (WARN|ERROR) |panic|\[(error|crit|alert|emerg)\]' | cut -c1-300)")
    fi
    # Lines the proxy logged for the run: the gate's files (LOGS=on) or its standard error (a
    # line per refusal with LOGS=stderr), nginx's access log (a line per connection, up to 64
    # KiB of them still in its buffer); the floor logs nothing.
    local logged_note
    case $proxy in
        icp-gate)
            if [[ $LOGS == on ]]; then
                logged_note="logged ${GATE_LINES:-no} lines"
            else
                logged_note="logged $(($(wc -l <"$log") - log_before)) lines"
            fi
            ;;
        nginx) logged_note="logged $(($(wc -l <"$NGX/access.log") - access_before)) lines" ;;
        floor) logged_note="logs nothing" ;;
    esac
    GATE_LINES=""

    local cpu line
    cpu=$(cpu_report "$before" "$after" "$PROXY_CPU" "$LOAD_CPU")
    local lat_kind=mean
    [[ $path == refuse ]] && lat_kind=p50
    # CPU time of the proxy process (user and system, every thread; nginx: its worker) per
    # refusal, connection or request.
    local cpu_us
    cpu_us=$(us_per "$ticks" "$answered")
    line=$(printf 'round %s/%s  %-8s %-9s  %10.1f %-10s  %4s %8s  %9d done  %s  cpu %sus/answer  sleeps %6.0f/s  %s' \
        "$round" "$ROUNDS" "$proxy" "$path" "$rate" "$unit" "$lat_kind" "$(fmt_us "$lat")" "$answered" "$cpu" \
        "${cpu_us:--}" "$(awk -v z="$sleeps" -v d="$secs" 'BEGIN { print (d > 0 ? z / d : 0) }')" "$logged_note")
    if ((${#problems[@]})); then
        line+="  PROBLEM: $(
            IFS=';'
            echo "${problems[*]}"
        )"
        ANOMALIES+=("round $round $proxy $path: ${problems[*]}")
    fi
    echo "$line"
    ROUND_LINES+=("$line")
    # Fields: proxy path rate latency busy%(proxy core) busy%(load core) cpu/answer.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$path" "$rate" "$lat" \
        "$(cpu_busy "$before" "$after" 3 4)" "$(cpu_busy "$before" "$after" 5 6)" "$cpu_us" >>"$RAW"
}


CONTENDERS=(icp-gate nginx)
((FLOOR == 1)) && CONTENDERS+=(floor)
case $LOGS in
    on) LOGGING_NOTE="LOGS=on: icp-gate access_log_file + audit_log (a refusal: an audit and an access line; a passed connection: an access line when it ends), nginx stream access_log buffer=64k (a line per connection)" ;;
    stderr) LOGGING_NOTE="LOGS=stderr: icp-gate level info, text on stderr to a file (a line per refusal, one per passed connection), nginx stream access_log buffer=64k (a line per connection)" ;;
    off) LOGGING_NOTE="LOGS=off: icp-gate level warn, no access log; nginx access_log off" ;;
esac
FLOOR_NOTE="none"
((FLOOR == 1)) && FLOOR_NOTE="proxy/examples/floor.rs: refuse (one read, the 7 alert bytes, close), relay (a copy both ways to the same origin); logs nothing"

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null || true) ]]; then GIT_REV+="+uncommitted"; fi
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
H2LOAD_VERSION=$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
HEADER=$(
    cat <<EOF
icp-gate TLS load test, $(date -u +%Y-%m-%dT%H:%M:%SZ), icp-gate $GIT_REV
machine: $CPUS CPUs ($CPU_MODEL), $(uname -sr), $NGINX_VERSION, h2load $H2LOAD_VERSION, $(openssl version | awk '{ print $1, $2 }')
registry: $RECORDS records (nginx stream map on \$ssl_preread_server_name: $MAP_ENTRIES entries, hostnames)
pinning: proxies on cpu $PROXY_CPU (one at a time under load), load generator and TLS origin on cpu $LOAD_CPU
rounds: $ROUNDS x ${DURATION}s per (proxy, path), warm-up ${WARMUP}s, each round starting with the next of: ${CONTENDERS[*]}
logging: $LOGGING_NOTE
floor: $FLOOR_NOTE
refuse: SNI $BLOCK_HOST, $REFUSE_HELLO hello ($CLASSIC_BYTES B classic, $PQ_BYTES B pq-sized), replayer x$REFUSE_CONNECTIONS connections; nginx refuses through an http server with ssl_reject_handshake on a unix socket
newconn: SNI $FORWARD_HOST, h2load --h1 -c $NEWCONN_CLIENTS, one request per connection, TLS 1.3 ECDSA P-256 origin
keepalive: SNI $FORWARD_HOST, h2load --h1 -c $KEEPALIVE_CLIENTS -m 1 -D ${DURATION}s, one connection per client
EOF
)
echo
echo "$HEADER"
echo

run_pair() { # ROUND PATH: every contender, each round starting with the next one
    local proxy
    for proxy in $(round_order "$1" "${CONTENDERS[@]}"); do load "$1" "$proxy" "$2"; done
}

if ((WARMUP > 0)) || [[ " $PATHS " == *" newconn "* ]]; then
    note "warming up (${WARMUP}s per proxy and path; the new-connection warm-up sizes its runs)"
    for path in $PATHS; do
        WARMUP=$((WARMUP > 0 ? WARMUP : 1)) run_pair warmup "$path"
    done
fi
if [[ " $PATHS " == *" newconn "* ]]; then
    NEWCONN_REQUESTS=$(awk -v r="${NEWCONN_WARM_RATE:-0}" -v d="$DURATION" -v c="$NEWCONN_CLIENTS" \
        'BEGIN { n = int(r * d); if (n < c * 10) n = c * 10; print n }')
    note "new connections: $NEWCONN_REQUESTS per run (warm-up rate ${NEWCONN_WARM_RATE:-0}/s x ${DURATION}s)"
fi
for ((round = 1; round <= ROUNDS; round++)); do
    for path in $PATHS; do
        run_pair "$round" "$path"
    done
done

LIVE=("icp-gate $GATE_PID" "nginx $NGINX_PID" "origin $ORIGIN_PID")
((FLOOR == 1)) && LIVE+=("floor-refuse $FLOOR_REFUSE_PID" "floor-relay $FLOOR_RELAY_PID")
for pair in "${LIVE[@]}"; do
    read -r name pid <<<"$pair"
    kill -0 "$pid" 2>/dev/null || ANOMALIES+=("$name exited during the run (KEEP_TMP=1 keeps $TMP)")
done

# ---------------------------------------------------------------------------------------------
# Summary: medians over the rounds, side by side, the ratios, CPU per answer, the cores and the
# rig's ceiling.

target() { case $1 in refuse) echo 1.5x ;; *) echo 1.0x ;; esac }
TABLE=$(
    three_way_rows 7 2 "cpu/answer gate/ngx/flr"
    echo
    echo "medians over $ROUNDS round(s). refuse: refusals/s; newconn: new TLS connections/s through to the origin; keepalive: requests/s on kept-alive TLS connections."
    echo "gate/nginx above 1: icp-gate does more per second (target: the design's). gate/floor: against the floor (the alert after one read; a plain relay), what this rig allows."
    echo "cpu/answer: CPU time of the proxy process (user and system; nginx: its worker) per refusal, connection or request. cpu$PROXY_CPU g/n: the proxy core busy in the gate's and nginx's runs."
    echo "ceiling: a core 95% busy or more. 'load core' means the load generator (and on newconn/keepalive the TLS origin) limited the run, not the proxy: the ratio then understates the difference."
)
for path in $PATHS; do
    case $path in refuse) unit="refusals/s" ;; newconn) unit="conn/s" ;; *) unit="req/s" ;; esac
    summary_line tls "$path" "$unit" 3 7 5 6
done
finish_run note
