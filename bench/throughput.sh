#!/bin/bash
# OpenPipe throughput against a plain `cat` baseline, in the same run.
#
#   bench/throughput.sh [BYTES]      (default 2 GiB)
#
# The producer is a 256 MiB file of random bytes, made once in a temporary
# directory on the same filesystem as the logs and `cat` N times (plus a
# `head -c` remainder): it is served from the page cache and identical for
# both runs. The baseline is `producer | cat > file`, timed start to finish.
# The guestlogd run is `varlinkctl call --exec ... OpenPipe -- sh -c
# 'producer >&3'`, timed until ListLogs shows the log's bytesWritten grown by
# BYTES. Rounds alternate cat, guestlogd, cat, guestlogd...; the best of
# each counts. Each round also times `producer | cat > /dev/null`, a ceiling
# that leaves the disk and page cache out, printed for information only. The log is capped at 64 MiB x 4 backups and the cap is checked.
#
# Env: GUESTLOGD (binary), VARLINKCTL, BENCH_TMPDIR (parent of the temp dir),
# RUNS (rounds, default 3), SRC_MIB (producer file size, default 256).
set -euo pipefail

BYTES=${1:-$((2 * 1024 * 1024 * 1024))}
RUNS=${RUNS:-3}
SRC_BYTES=$(( ${SRC_MIB:-256} * 1024 * 1024 ))
MAX_SIZE=$((64 * 1024 * 1024))
MAX_BACKUPS=4
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUESTLOGD=${GUESTLOGD:-$ROOT/target/release/guestlogd}
VARLINKCTL=${VARLINKCTL:-/var/cache/guestlogd-test/bin/varlinkctl}

[[ $BYTES =~ ^[0-9]+$ && $BYTES -gt 0 ]] || { echo "usage: $0 [BYTES]" >&2; exit 2; }
[[ -x $GUESTLOGD ]] || { echo "$GUESTLOGD missing: run cargo build --release" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }

DIR=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/guestlogd-bench.XXXXXX")
DAEMON=
cleanup() {
    if [[ -n $DAEMON ]]; then
        kill -TERM "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$DIR/run" "$DIR/log"
SOCK=$DIR/run/io.guestlogd.Manager

# The producer: the same script for both runs.
(( SRC_BYTES > BYTES )) && SRC_BYTES=$BYTES
head -c "$SRC_BYTES" /dev/urandom > "$DIR/src"
FULL=$(( BYTES / SRC_BYTES ))
REM=$(( BYTES % SRC_BYTES ))
{
    echo "src=$DIR/src"
    echo "i=0; while [ \$i -lt $FULL ]; do cat \"\$src\"; i=\$((i + 1)); done"
    (( REM > 0 )) && echo "head -c $REM \"\$src\""
    echo "exit 0"
} > "$DIR/producer.sh"
PRODUCER="sh $DIR/producer.sh"
cat "$DIR/src" > /dev/null  # warm the page cache

printf '[limits]\nmax-pipes = 4096\n[log]\nmax-size = %d\nmax-backups = %d\n' \
    "$MAX_SIZE" "$MAX_BACKUPS" > "$DIR/config.toml"
"$GUESTLOGD" --runtime-dir "$DIR/run" --log-dir "$DIR/log" --config "$DIR/config.toml" \
    2> "$DIR/daemon.err" &
DAEMON=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { echo "daemon did not start:" >&2; cat "$DIR/daemon.err" >&2; exit 1; }

now() { date +%s.%N; }
# ListLogs with "more": its pages, one JSON object a line (works at any
# number of logs; without it a long list is refused with replySize).
list_logs() {
    "$VARLINKCTL" call --more --json=short "$SOCK" io.guestlogd.Manager.ListLogs '{}'
}
# bytesWritten of the log "bench", 0 if it does not exist yet.
written() {
    list_logs | jq -rs '[.[].logs[] | select(.name == "bench") | .bytesWritten] | first // 0'
}
rate() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }

run_cat() {
    sync
    local t0 t1
    t0=$(now)
    $PRODUCER | cat > "$DIR/cat.out"
    t1=$(now)
    local got
    got=$(stat -c %s "$DIR/cat.out")
    rm -f "$DIR/cat.out"
    [[ $got == "$BYTES" ]] || { echo "cat wrote $got of $BYTES bytes" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
}

run_guestlogd() {
    sync
    local before target t0 t1 w deadline
    before=$(written)
    target=$(( before + BYTES ))
    t0=$(now)
    "$VARLINKCTL" call --exec "$SOCK" io.guestlogd.Manager.OpenPipe \
        "{\"name\":\"bench\",\"maxSize\":$MAX_SIZE,\"maxBackups\":$MAX_BACKUPS}" \
        -- sh -c "$PRODUCER >&3" > /dev/null
    deadline=$(( $(date +%s) + 120 ))
    while :; do
        w=$(written)
        (( w >= target )) && break
        (( $(date +%s) < deadline )) || { echo "timed out: $((w - before)) of $BYTES bytes" >&2; exit 1; }
        sleep 0.01
    done
    t1=$(now)
    (( w == target )) || { echo "bytesWritten grew by $((w - before)), not $BYTES" >&2; exit 1; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
}

run_null() {
    local t0 t1
    t0=$(now)
    $PRODUCER | cat > /dev/null
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
}

best_cat=; best_gld=; best_null=
for r in $(seq "$RUNS"); do
    t=$(run_null)
    echo "run $r: cat>null  $(rate "$t") MB/s ($t s)  [ceiling: producer and pipe only]"
    best_null=$(awk -v a="$best_null" -v b="$t" 'BEGIN { print (a == "" || b < a) ? b : a }')
    t=$(run_cat)
    echo "run $r: cat       $(rate "$t") MB/s ($t s)"
    best_cat=$(awk -v a="$best_cat" -v b="$t" 'BEGIN { print (a == "" || b < a) ? b : a }')
    t=$(run_guestlogd)
    echo "run $r: guestlogd $(rate "$t") MB/s ($t s)"
    best_gld=$(awk -v a="$best_gld" -v b="$t" 'BEGIN { print (a == "" || b < a) ? b : a }')
done

# The cap held: bench.log <= 64 MiB, at most 4 backups, none over the cap.
info=$(list_logs | jq -sc '.[].logs[] | select(.name == "bench")')
size=$(stat -c %s "$DIR/log/bench.log")
backups=$(find "$DIR/log" -maxdepth 1 -name 'bench.log.*' | wc -l)
over=$(find "$DIR/log" -maxdepth 1 -name 'bench.log*' -size +"${MAX_SIZE}c" | wc -l)
stray=$(find "$DIR/log" -maxdepth 1 -name 'bench.log.*' ! -regex '.*/bench\.log\.[0-3]' | wc -l)
echo "log: $info"
echo "log: bench.log $size bytes, $backups backups on disk"
if (( size > MAX_SIZE || backups > MAX_BACKUPS || over > 0 || stray > 0 )); then
    echo "FAIL: cap broken (size $size, backups $backups, over cap $over, stray $stray)" >&2
    exit 1
fi
[[ $(jq -r .bytesDropped <<< "$info") == 0 ]] || { echo "FAIL: bytes dropped" >&2; exit 1; }

echo "ceiling: producer | cat > /dev/null $(rate "$best_null") MB/s; guestlogd/ceiling $(awk -v c="$best_null" -v g="$best_gld" 'BEGIN { printf "%.2f", c / g }')"
ratio=$(awk -v c="$best_cat" -v g="$best_gld" 'BEGIN { printf "%.2f", c / g }')
echo "throughput: guestlogd $(rate "$best_gld") MB/s, cat $(rate "$best_cat") MB/s, ratio $ratio"
