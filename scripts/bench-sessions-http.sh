#!/usr/bin/env bash
# The read-only session path over HTTP: cache-sdk sessions on a real redis-server
# (coherence on, the cache's defaults) against tower-sessions with its in-process
# MemoryStore (the ceiling: no Redis at all), both served by `session-http`
# (benches/session_http.rs) and driven by wrk.
#
#   scripts/bench-sessions-http.sh [ROUNDS] [SECONDS]      (default: 5 rounds of 10 s)
#
# PROFILE=1 also records a CPU profile of each server during its first round
# (`perf record`, printed as `perf report` top entries at the end; PROFILE_OUT=DIR keeps
# the perf.data.{ours,theirs} files there).
#
# Each round runs wrk (32 connections) against cache-sdk, then against tower-sessions
# (A/B/A/B...), so that load from other work on the machine falls on both alike; the
# summary is the median of the per-round ratios. Alongside each run, `perf stat` measures
# the server's CPU time (task-clock: user and kernel, every thread), so CPU time per request
# is a second figure that depends much less on how busy the machine is than requests/s
# (hardware counters such as `instructions` are not available on every VM);
# `INFO commandstats` deltas give the Redis commands per request
# (every command but INFO). Needs: wrk, redis-server, curl, perf (optional).
set -euo pipefail

ROUNDS=${1:-5}
SECONDS_PER_RUN=${2:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
SESSIONS=${SESSIONS:-64}

cd "$(dirname "$0")/.."
# SESSION_HTTP_BIN: a server binary built earlier (to compare two builds of the SDK).
BIN=${SESSION_HTTP_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release -q -p cache-sdk-benches --bin session-http
    BIN=target/release/session-http
fi

# PIN=1: the servers run on CPU 1 only, wrk and redis-server on CPU 0 (taskset), so that the
# server under test has one core to itself and does not compete with the load generator:
# steadier figures on a 2-core machine (each server then gets one core's throughput).
SERVER_CPU=""
LOAD_CPU=""
if [ "${PIN:-0}" = 1 ]; then
    SERVER_CPU="taskset -c 1"
    LOAD_CPU="taskset -c 0"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

REDIS_PORT=$(free_port)
$LOAD_CPU redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

OURS_PORT=$(free_port)
THEIRS_PORT=$(free_port)
$SERVER_CPU "$BIN" ours "127.0.0.1:$OURS_PORT" "redis://127.0.0.1:$REDIS_PORT" >"$WORK/ours.log" 2>&1 &
OURS_PID=$!
PIDS+=($OURS_PID)
$SERVER_CPU "$BIN" theirs "127.0.0.1:$THEIRS_PORT" >"$WORK/theirs.log" 2>&1 &
THEIRS_PID=$!
PIDS+=($THEIRS_PID)
for port in "$OURS_PORT" "$THEIRS_PORT"; do
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/read" && break
        sleep 0.1
    done
done

# Log SESSIONS users in on each server; wrk cycles through their cookies.
lua_for() {
    local port=$1 out=$2
    {
        echo "local cookies = {"
        for i in $(seq "$SESSIONS"); do
            local c
            c=$(curl -s -D - -o /dev/null -X POST --data "$i" "http://127.0.0.1:$port/login" |
                tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | tail -1)
            [ -n "$c" ] || { echo "login on port $port set no cookie" >&2; exit 1; }
            echo "  \"$c\","
        done
        echo "}"
        cat <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/read", { ["Cookie"] = cookies[(n % #cookies) + 1] })
end
LUA
    } >"$out"
}
lua_for "$OURS_PORT" "$WORK/ours.lua"
lua_for "$THEIRS_PORT" "$WORK/theirs.lua"

redis_calls() {
    redis-cli -p "$REDIS_PORT" info commandstats |
        tr -d '\r' | awk -F'[:,=]' '/^cmdstat_/ && $1 != "cmdstat_info" { s += $3 } END { print s + 0 }'
}

HAVE_PERF=0
command -v perf >/dev/null 2>&1 && perf stat -e task-clock true >/dev/null 2>&1 && HAVE_PERF=1

# run NAME PORT PID SECONDS: prints "requests rps cpu_us_per_req"
run() {
    local name=$1 port=$2 pid=$3 secs=$4
    local perf_out="$WORK/perf.$name"
    if [ "$HAVE_PERF" = 1 ]; then
        perf stat -x, -e task-clock,context-switches -p "$pid" -o "$perf_out" -- sleep "$((secs + 1))" &
        local perf_pid=$!
        sleep 0.5
    fi
    local prof_pid=""
    if [ "${PROFILE:-0}" = 1 ] && [ "${WARMING:-0}" = 0 ] && [ ! -e "$WORK/perf.data.$name" ]; then
        perf record -q -e cpu-clock -F 2000 -p "$pid" -o "$WORK/perf.data.$name" -- sleep "$secs" >/dev/null 2>&1 &
        prof_pid=$!
    fi
    local out
    out=$($LOAD_CPU wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" -s "$WORK/$name.lua" "http://127.0.0.1:$port/read")
    if grep -q "Non-2xx" <<<"$out"; then
        echo "$name: some responses were not 2xx:" >&2
        echo "$out" >&2
        exit 1
    fi
    [ -z "$prof_pid" ] || wait "$prof_pid" || true
    local requests rps
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    local cpu="-"
    if [ "$HAVE_PERF" = 1 ]; then
        wait "$perf_pid" || true
        # perf counted over secs+1 s: a little idle time at both ends (the server does
        # next to nothing then), divided by the requests wrk counted.
        cpu=$(awk -F, -v r="$requests" '$3 ~ /task-clock/ { printf "%.2f", $1 * 1000 / r }' "$perf_out")
    fi
    local cs="-"
    if [ "$HAVE_PERF" = 1 ]; then
        cs=$(awk -F, -v r="$requests" '$3 ~ /context-switches/ && $1 ~ /^[0-9]+$/ { printf "%.2f", $1 / r }' "$perf_out")
        [ -n "$cs" ] || cs="-"
    fi
    echo "$requests $rps $cpu $cs"
}

echo "warming up..."
WARMING=1 run ours "$OURS_PORT" "$OURS_PID" 3 >/dev/null
WARMING=1 run theirs "$THEIRS_PORT" "$THEIRS_PID" 3 >/dev/null

printf '%-6s %-15s %12s %12s %10s %16s %12s\n' round server requests req/s ratio 'CPU µs/request' 'cs/request'
RATIOS=()
IRATIOS=()
OURS_REQUESTS=0
OURS_CALLS=0
for round in $(seq "$ROUNDS"); do
    before=$(redis_calls)
    read -r oreq orps ocpu ocs <<<"$(run ours "$OURS_PORT" "$OURS_PID" "$SECONDS_PER_RUN")"
    after=$(redis_calls)
    OURS_REQUESTS=$((OURS_REQUESTS + oreq))
    OURS_CALLS=$((OURS_CALLS + after - before))
    read -r treq trps tcpu tcs <<<"$(run theirs "$THEIRS_PORT" "$THEIRS_PID" "$SECONDS_PER_RUN")"
    ratio=$(awk -v a="$orps" -v b="$trps" 'BEGIN { printf "%.3f", a / b }')
    RATIOS+=("$ratio")
    if [ "$ocpu" != "-" ]; then
        IRATIOS+=("$(awk -v a="$ocpu" -v b="$tcpu" 'BEGIN { printf "%.3f", b / a }')")
    fi
    printf '%-6s %-15s %12s %12s %10s %16s %12s\n' "$round" cache-sdk "$oreq" "$orps" "$ratio" "$ocpu" "$ocs"
    printf '%-6s %-15s %12s %12s %10s %16s %12s\n' "$round" tower-sessions "$treq" "$trps" "" "$tcpu" "$tcs"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo
echo "median requests/s ratio cache-sdk / tower-sessions(MemoryStore): $(median "${RATIOS[@]}")  (rounds: ${RATIOS[*]})"
if [ "${#IRATIOS[@]}" -gt 0 ]; then
    echo "median CPU-time-per-request ratio tower-sessions / cache-sdk (>= 1: cache-sdk is cheaper): $(median "${IRATIOS[@]}")  (rounds: ${IRATIOS[*]})"
fi
awk -v c="$OURS_CALLS" -v r="$OURS_REQUESTS" 'BEGIN { printf "Redis commands per cache-sdk request: %.5f (%d commands, %d requests)\n", c / r, c, r }'
echo "commands by name over the whole run:"
redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep '^cmdstat_' | cut -d, -f1
for name in ours theirs; do
    [ -e "$WORK/perf.data.$name" ] || continue
    [ -z "${PROFILE_OUT:-}" ] || cp "$WORK/perf.data.$name" "$PROFILE_OUT/"
    echo
    echo "$name server profile (self time, top 40):"
    perf report -i "$WORK/perf.data.$name" --no-children --sort symbol --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -40 | sed 's/  *- *- *$//' || true
done
