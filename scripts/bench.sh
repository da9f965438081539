#!/usr/bin/env bash
# Runs Magpie's load-generator scenarios against a throwaway local server and prints the results.
#
#   scripts/bench.sh                 # everything: throughput matrix, latency, idle
#   scripts/bench.sh throughput      # only the throughput matrix
#   scripts/bench.sh latency idle    # latency (light + half of the best throughput) and idle
#   scripts/bench.sh disk            # only the disk's fsync latency (also run before latency)
#
# Each run gets a fresh server (`target/release/magpie serve`) on 127.0.0.1:$PORT with an
# empty data dir in $TMPDIR, cheap Argon2 (setup logs in hundreds of users) and the
# per-connection send rate limit lifted (the bench pipelines far above it). The server is
# killed when the run ends. Human summaries go to the terminal; one JSON object per run is
# appended to $RESULTS. Everything is bounded in time and talks to loopback only.
#
# Knobs (environment): PORT, DURATION_S, HALF_DURATION_S (the half-max latency runs: 60 s by
# default, because compactions that a 10 s run barely reaches dominate the tail), WARMUP_S, PAIRS_LIST, WINDOW_LIST, LATENCY_PAIRS,
# HALF_RATE (skip the throughput matrix for the half-max latency runs), HALF_PAIRS_LIST (pairs
# of those runs; default 10 and the best throughput's), DISK_ROUNDS, IDLE_CONNECTIONS,
# IDLE_HOLD_S, RESULTS, QUIET_WAIT_S / QUIET_BUSY_PERCENT / QUIET_IO_PERCENT (before each run,
# wait up to QUIET_WAIT_S seconds for CPU use and I/O pressure to drop below these), MAGPIE_BIN (use
# this binary instead of building target/release/magpie).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PORT=${PORT:-18080}
DURATION_S=${DURATION_S:-10}
HALF_DURATION_S=${HALF_DURATION_S:-60}
WARMUP_S=${WARMUP_S:-2}
PAIRS_LIST=${PAIRS_LIST:-"50 100 200"}
WINDOW_LIST=${WINDOW_LIST:-"16 64 256"}
LATENCY_PAIRS=${LATENCY_PAIRS:-100}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-15000}
IDLE_HOLD_S=${IDLE_HOLD_S:-5}
RESULTS=${RESULTS:-$ROOT/target/bench-results.jsonl}
BIN=${MAGPIE_BIN:-$ROOT/target/release/magpie}
SERVER="http://127.0.0.1:$PORT"

SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
    SCENARIOS=(throughput latency idle)
fi

if [ -z "${MAGPIE_BIN:-}" ]; then
    cargo build --release -p magpie
fi
# 15,000 sockets need more than the usual 1,024 descriptors, for the server and for the bench.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$(dirname "$RESULTS")"

SERVER_PID=""
DATA_DIR=""

start_server() {
    DATA_DIR=$(mktemp -d)
    MAGPIE_ARGON2_M_KIB=256 MAGPIE_ARGON2_T=1 \
        MAGPIE_SEND_RATE_PER_SEC=1000000 MAGPIE_SEND_BURST=1000000 \
        MAGPIE_LOG=${MAGPIE_LOG:-warn} MAGPIE_ALLOW_STRANGERS=true \
        "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA_DIR" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "$SERVER/healthz" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited during startup" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "server did not become healthy on $SERVER" >&2
    return 1
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ -n "$DATA_DIR" ]; then
        rm -rf "$DATA_DIR"
        DATA_DIR=""
    fi
}
trap stop_server EXIT

# Prints the machine's CPU use (percent of all cores) over one second, from /proc/stat.
cpu_busy_percent() {
    local a b
    read -r -a a < <(head -1 /proc/stat)
    sleep 1
    read -r -a b < <(head -1 /proc/stat)
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do
        total=$((total + b[i] - a[i]))
    done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# Percent of the last 10 s in which some task waited for the disk (0 if PSI is unavailable).
io_pressure_percent() {
    local avg10
    avg10=$(sed -n 's/^some avg10=\([0-9]*\).*/\1/p' /proc/pressure/io 2>/dev/null || true)
    echo "${avg10:-0}"
}

# Other engineers share the two cores and the disk: wait (up to QUIET_WAIT_S) until the
# machine is quiet, since both CPU and fsync latency move the results.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT_S:-180})) busy io
    while :; do
        busy=$(cpu_busy_percent)
        io=$(io_pressure_percent)
        if { [ "$busy" -le "${QUIET_BUSY_PERCENT:-15}" ] && [ "$io" -le "${QUIET_IO_PERCENT:-5}" ]; } ||
            [ $SECONDS -ge $deadline ]; then
            echo "before the run: CPU ${busy}% busy, I/O pressure ${io}%"
            return
        fi
    done
}

# Runs one scenario on a fresh server; prints the summary, appends the JSON line, and echoes
# the JSON into $LAST_JSON.
LAST_JSON=""
run_bench() {
    wait_quiet
    start_server
    echo
    echo "=== magpie bench $*   ($(uptime | sed 's/.*load average/load average/'))"
    local out status=0
    out=$("$BIN" bench "$@" --server "$SERVER" --server-pid "$SERVER_PID" --json) || status=$?
    stop_server
    if [ -n "$out" ]; then
        echo "$out" >>"$RESULTS"
    fi
    LAST_JSON=$out
    if [ $status -ne 0 ]; then
        echo "!!! magpie bench $* failed (exit $status)" >&2
    fi
    sleep 1
}

BEST_RATE=0
BEST_PAIRS=$LATENCY_PAIRS
BEST_WINDOW=""

throughput() {
    local summary=()
    for pairs in $PAIRS_LIST; do
        for window in $WINDOW_LIST; do
            run_bench throughput --pairs "$pairs" --window "$window" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S"
            if [ -n "$LAST_JSON" ]; then
                local rate p50 p99 cpu
                rate=$(jq -r '.acked_per_s | floor' <<<"$LAST_JSON")
                p50=$(jq -r '.latency_deliver.p50_us / 1000 | . * 100 | round / 100' <<<"$LAST_JSON")
                p99=$(jq -r '.latency_deliver.p99_us / 1000 | . * 100 | round / 100' <<<"$LAST_JSON")
                cpu=$(jq -r '(.server.cpu_percent // 0) | round' <<<"$LAST_JSON")
                summary+=("$(printf '%6s %7s %10s %10s %10s %8s' "$pairs" "$window" "$rate" "$p50" "$p99" "$cpu%")")
                if [ "$rate" -gt "$BEST_RATE" ]; then
                    BEST_RATE=$rate
                    BEST_PAIRS=$pairs
                    BEST_WINDOW=$window
                fi
            fi
        done
    done
    echo
    echo "=== throughput matrix (acked sends/s; send→deliver latency in ms; server CPU)"
    printf '%6s %7s %10s %10s %10s %8s\n' pairs window acked/s p50_ms p99_ms cpu
    printf '%s\n' "${summary[@]}"
    echo "best: $BEST_RATE/s with $BEST_PAIRS pairs, window $BEST_WINDOW"
}

# The fsync latency of the disk the servers' data directories live on: every acknowledged
# message waits for one, so it is printed next to the latency results.
disk() {
    local dir
    dir=$(mktemp -d)
    echo
    echo "=== magpie bench disk   ($(uptime | sed 's/.*load average/load average/'))"
    local out
    out=$("$BIN" bench disk --dir "$dir" --rounds "${DISK_ROUNDS:-2000}" --json) || true
    rm -rf "$dir"
    if [ -n "$out" ]; then
        echo "$out" >>"$RESULTS"
    fi
}

latency() {
    disk
    run_bench latency --pairs 1 --rate 200 --duration-s "$DURATION_S"
    local half=${HALF_RATE:-$((BEST_RATE / 2))}
    if [ "$half" -gt 0 ]; then
        # The same total rate spread over few and over many connections: paced sends of many
        # connections each carry one message per frame and per write op, so they cost the
        # server more per message than the few busy connections do.
        local pairs
        for pairs in ${HALF_PAIRS_LIST:-10 $BEST_PAIRS}; do
            run_bench latency --pairs "$pairs" --rate "$half" --duration-s "$HALF_DURATION_S"
        done
    else
        echo "(no throughput result and no HALF_RATE: skipping the half-max latency run)"
    fi
}

idle() {
    run_bench idle --connections "$IDLE_CONNECTIONS" --hold-s "$IDLE_HOLD_S"
}

echo "machine: $(nproc) cores; $(uptime)"
echo "results: $RESULTS"
for s in "${SCENARIOS[@]}"; do
    case $s in
    throughput | latency | idle | disk) "$s" ;;
    *)
        echo "unknown scenario $s (throughput, latency, idle, disk)" >&2
        exit 2
        ;;
    esac
done
