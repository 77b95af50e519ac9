#!/bin/bash
# Concurrent callers, this tree against a baseline commit, in the same run.
#
#   bench/callers.sh [-- ARGS FOR callers.py]
#
# Builds the release guestlogd of this tree (`cargo build --release --bin
# guestlogd`) and of BASE (default 7dd7657, the last version with zlink's
# single server loop), then runs bench/callers.py against both: GetStatus
# and ListLogs (1,000 logs) at 1, 16 and 256 callers, and ListLogs time
# against 1k, 4k and 16k logs, printed as one table with the ratio and the
# machine's load (/proc/loadavg before and after, nproc).
#
# The baseline is built in a temporary detached worktree of BASE with its
# own target dir under CACHE (default /var/cache/guestlogd-bench) and kept
# there as CACHE/<hash>/guestlogd: a later run with the same BASE reuses it.
#
# Env: BASE (a commit), CACHE, CARGO_TARGET_DIR (this tree's target dir),
# NEW_BIN / BASE_BIN (use these binaries instead of building).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-7dd7657}
CACHE=${CACHE:-/var/cache/guestlogd-bench}
[[ ${1:-} == -- ]] && shift

command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo is needed" >&2; exit 1; }

# This tree.
if [[ -z ${NEW_BIN:-} ]]; then
    echo "== building this tree ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo ', with changes'))" >&2
    (cd "$ROOT" && cargo build --release --bin guestlogd) >&2
    NEW_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/guestlogd
fi
[[ -x $NEW_BIN ]] || { echo "$NEW_BIN missing" >&2; exit 1; }

# The baseline, cached by commit hash.
if [[ -z ${BASE_BIN:-} ]]; then
    HASH=$(git -C "$ROOT" rev-parse --verify "$BASE^{commit}")
    BASE_BIN=$CACHE/$HASH/guestlogd
    if [[ ! -x $BASE_BIN ]]; then
        echo "== building baseline ${HASH:0:12}" >&2
        mkdir -p "$CACHE/$HASH"
        SRC=$(mktemp -d "$CACHE/src-${HASH:0:12}.XXXXXX")
        rmdir "$SRC"
        git -C "$ROOT" worktree add --detach "$SRC" "$HASH" >&2
        cleanup_src() { git -C "$ROOT" worktree remove --force "$SRC" 2>/dev/null || rm -rf "$SRC"; }
        trap cleanup_src EXIT
        (cd "$SRC" && cargo build --release --bin guestlogd --target-dir "$CACHE/$HASH/target") >&2
        cp "$CACHE/$HASH/target/release/guestlogd" "$BASE_BIN.tmp"
        mv "$BASE_BIN.tmp" "$BASE_BIN"
        cleanup_src
        trap - EXIT
    else
        echo "== baseline ${HASH:0:12}: cached $BASE_BIN" >&2
    fi
fi
[[ -x $BASE_BIN ]] || { echo "$BASE_BIN missing" >&2; exit 1; }

exec python3 "$ROOT/bench/callers.py" \
    --bin "base=$BASE_BIN" --bin "new=$NEW_BIN" \
    --label "base=$(git -C "$ROOT" rev-parse --short "$BASE")" \
    --label "new=$(git -C "$ROOT" rev-parse --short HEAD)" "$@"
