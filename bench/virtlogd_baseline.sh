#!/usr/bin/env bash
# The REAL virtlogd (libvirt 11.3 from the cached libvirt root made by
# tests/env/libvirt.sh) on a private socket, for throughput benchmarks against
# the same binary the libvirt end-to-end tests use. No systemd: virtlogd is
# chrooted into a fresh overlay of the root (the cache is never modified),
# in its own mount namespace with /proc and /dev.
#   bench/virtlogd_baseline.sh start DIR   prints virtlogd's pid once
#                                          DIR/run/libvirt/virtlogd-sock accepts
#   bench/virtlogd_baseline.sh stop DIR    stops it, removes the overlay
# DIR (created if missing) holds run/ (bound at /run: the socket, the pid
# file), log/ (bound at /var/log/libvirt: call OpenLogFile with
# /var/log/libvirt/NAME.log, the file lands in DIR/log/NAME.log), the overlay
# and virtlogd's stderr in DIR/virtlogd.err. VIRTLOGD_CONF=file: a
# virtlogd.conf to use (default: the package's, max_size 2 MiB, 3 backups).
# Root only (the daemon only serves uid 0 anyway).
set -euo pipefail
ROOT=/var/cache/guestlogd-test/libvirt-root
[ $# -eq 2 ] || { echo "usage: $0 start|stop DIR" >&2; exit 64; }
mkdir -p "$2"
D=$(realpath "$2")
R=$D/root

stop() {
    if [ -s "$D/pid" ]; then
        local pid; pid=$(cat "$D/pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$D/pid"
    fi
    for m in "$R/var/log/libvirt" "$R/run" "$R"; do
        mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }
    done
    rm -rf --one-file-system "$D/upper" "$D/work" "$R"
}

case "$1" in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 64 ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 2; }
[ -f "$ROOT/.guestlogd-complete" ] || {
    echo "$0: no libvirt root: $(cat /var/cache/guestlogd-test/libvirt.unavailable 2>/dev/null || echo 'run tests/env/libvirt.sh')" >&2
    exit 2
}
stop
trap 'rc=$?; [ $rc -eq 0 ] || { tail -n 5 "$D/virtlogd.err" >&2 2>/dev/null; stop; }' EXIT
mkdir -p "$D/upper" "$D/work" "$R" "$D/run" "$D/log"
mount -t overlay -o "lowerdir=$ROOT,upperdir=$D/upper,workdir=$D/work" guestlogd-bench-virtlogd "$R"
mount --bind "$D/run" "$R/run"
mount --bind "$D/log" "$R/var/log/libvirt"
rm -f "$D/run/libvirt/virtlogd-sock"
CONF=/etc/libvirt/virtlogd.conf
if [ -n "${VIRTLOGD_CONF:-}" ]; then cp "$VIRTLOGD_CONF" "$R/etc/libvirt/bench.conf"; CONF=/etc/libvirt/bench.conf; fi
# unshare (no --fork) execs sh, which execs chroot, which execs virtlogd: $!
# is virtlogd's pid.
setsid unshare --mount --propagation private sh -c '
    mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" &&
    exec chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin /usr/sbin/virtlogd -f "$2"' \
    sh "$R" "$CONF" </dev/null >/dev/null 2>"$D/virtlogd.err" &
echo $! >"$D/pid"
S=$D/run/libvirt/virtlogd-sock
for _ in $(seq 100); do
    [ -S "$S" ] && python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$S" 2>/dev/null && break
    kill -0 "$(cat "$D/pid")" 2>/dev/null || { echo "$0: virtlogd exited" >&2; exit 1; }
    sleep 0.1
done
[ -S "$S" ] || { echo "$0: no $S after 10 s" >&2; exit 1; }
cat "$D/pid"
