#!/usr/bin/env bash
# The real virtlogd (libvirt 11.3, from the cached libvirt root, via
# bench/virtlogd_baseline.sh) against guestlogd's libvirt front, side by side
# in one run: the same writers, 1 and 8 pipes, BYTES per configuration.
#
#   bench/virtlogd_vs_guestlogd.sh [BYTES]     (default 2 GiB; root only)
#
# Both daemons run at once, each on its own private socket, logs on disk
# (BENCH_TMPDIR, default /var/tmp: the filesystem is printed), libvirt's
# default policy for both (2 MiB x 3 backups: the package's virtlogd.conf,
# guestlogd's [libvirt] defaults). Only one is fed at a time; rounds alternate
# which goes first. How one measurement works: bench/virtlogd_vs_guestlogd.py.
# Env: ROUNDS (default 2), PIPES (default 1,8), GUESTLOGD (the binary,
# default target/release/guestlogd: cargo build --release --bin guestlogd).
set -euo pipefail
BYTES=${1:-$((2 << 30))}
ROUNDS=${ROUNDS:-2}
PIPES=${PIPES:-1,8}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
GUESTLOGD=${GUESTLOGD:-$ROOT/target/release/guestlogd}
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (both fronts serve uid 0 only)" >&2; exit 2; }
[[ $BYTES =~ ^[0-9]+$ ]] || { echo "usage: $0 [BYTES]" >&2; exit 64; }
[ -x "$GUESTLOGD" ] || { echo "$0: no $GUESTLOGD: cargo build --release --bin guestlogd" >&2; exit 2; }

DIR=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/vlbench.XXXXXX")
GL=
cleanup() {
    "$HERE/virtlogd_baseline.sh" stop "$DIR/vl" || true
    if [ -n "$GL" ]; then
        kill -TERM "$GL" 2>/dev/null || true
        wait "$GL" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load() { echo "load: $(cat /proc/loadavg) (nproc $(nproc))"; }
echo "virtlogd vs guestlogd libvirt front, $(date -u +%FT%TZ), $(uname -r)"
echo "guestlogd: $GUESTLOGD ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "logs in $DIR: $(df -PT "$DIR" | awk 'NR==2 {print $2 " on " $1 " (mounted at " $7 ")"}')"
echo "policy: 2 MiB x 3 backups (libvirt's default, both daemons)"
echo "writers: forked Python, os.write of 64 KiB blocks of printable lines, $PIPES pipes, $BYTES bytes per configuration, $ROUNDS rounds"
load

VPID=$("$HERE/virtlogd_baseline.sh" start "$DIR/vl")
grep -E '^\s*max_(size|backups)' "$DIR/vl/root/etc/libvirt/virtlogd.conf" >/dev/null &&
    echo "WARNING: the cached virtlogd.conf sets max_size/max_backups" || true
echo "virtlogd: pid $VPID, $(chroot "$DIR/vl/root" /usr/sbin/virtlogd --version 2>/dev/null | head -n1 || echo 'version ?')"

mkdir -p "$DIR/gl/run" "$DIR/gl/log" "$DIR/gl/logs"
cat >"$DIR/gl/c.toml" <<EOF
[libvirt]
socket = "$DIR/gl/virtlogd-sock"
roots = ["$DIR/gl/logs"]
EOF
"$GUESTLOGD" --runtime-dir "$DIR/gl/run" --log-dir "$DIR/gl/log" --config "$DIR/gl/c.toml" \
    </dev/null >"$DIR/gl/out" 2>&1 &
GL=$!
for _ in $(seq 100); do
    python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' \
        "$DIR/gl/virtlogd-sock" 2>/dev/null && break
    kill -0 "$GL" 2>/dev/null || { echo "$0: guestlogd exited:" >&2; tail -n 5 "$DIR/gl/out" >&2; exit 1; }
    sleep 0.1
done
echo "guestlogd: pid $GL, libvirt front on $DIR/gl/virtlogd-sock"
echo

python3 "$HERE/virtlogd_vs_guestlogd.py" --bytes "$BYTES" --pipes "$PIPES" --rounds "$ROUNDS" \
    "virtlogd=$DIR/vl/run/libvirt/virtlogd-sock,$VPID,/var/log/libvirt,$DIR/vl/log" \
    "guestlogd=$DIR/gl/virtlogd-sock,$GL,$DIR/gl/logs,$DIR/gl/logs"
echo
load
