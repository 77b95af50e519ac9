#!/usr/bin/env bash
# Provide a Debian trixie root (systemd 257) to boot as PID 1 of a private
# namespace (tests/systemd/boot.sh), cached at $W/trixie and never modified by
# tests (they boot an overlay on top of it). Idempotent: skipped when the stamp
# $W/trixie/.guestlogd-complete matches this script's parameters.
# Never fails: on error it prints "SKIPPED: systemd unavailable: <reason>" and
# writes the reason to $W/systemd.unavailable (removed on success).
set -euo pipefail

W=/var/cache/guestlogd-test
ROOT=$W/trixie
STAMP=$ROOT/.guestlogd-complete
UNAVAIL=$W/systemd.unavailable
LOG=$W/systemd.log
SUITE=trixie
INCLUDE=systemd,python3-minimal,procps
STAMP_TEXT="suite=$SUITE variant=minbase include=$INCLUDE masked=systemd-modules-load.service v1"

# Remove a (partial) root: first whatever a failed debootstrap left mounted in it.
wipe() {
    local m
    for m in $(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$1"
}

fail() {
    [ -d "$ROOT.tmp" ] && wipe "$ROOT.tmp"
    mkdir -p "$W"
    echo "$*" >"$UNAVAIL"
    echo "SKIPPED: systemd unavailable: $*"
    exit 0
}

works() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] &&
        [ -x "$ROOT/usr/lib/systemd/systemd" ] && [ -x "$ROOT/usr/bin/python3" ] &&
        [ -x "$ROOT/bin/kill" ]
}

if works; then
    rm -f "$UNAVAIL"
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "not root"
command -v unshare >/dev/null || fail "unshare (util-linux) not found"
command -v nsenter >/dev/null || fail "nsenter (util-linux) not found"
[ -d /sys/fs/cgroup/unified ] || [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] ||
    fail "no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || fail "overlayfs not supported by this kernel"

if ! command -v debootstrap >/dev/null; then
    echo "setup: apt-get install debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; } >"$LOG" 2>&1 ||
        fail "apt-get install debootstrap failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
fi
M=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$M" ] || fail "no Debian mirror in /etc/apt/sources.list.d/debian.sources"

# Refuse to wipe a root that a running test instance still uses as lowerdir.
if grep -q "lowerdir=$ROOT" /proc/mounts 2>/dev/null; then
    fail "$ROOT is incomplete but in use by a mounted overlay (stop running instances)"
fi

echo "setup: debootstrap $SUITE into $ROOT"
wipe "$ROOT"
wipe "$ROOT.tmp"
mkdir -p "$W"
t0=$(date +%s)
timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT.tmp" "$M" >"$LOG" 2>&1 ||
    fail "debootstrap $SUITE failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"

# Loading modules is impossible in the namespace; the failed unit would keep
# is-system-running at "degraded".
ln -sf /dev/null "$ROOT.tmp/etc/systemd/system/systemd-modules-load.service"
# Keep downloaded .debs out of the cache.
rm -rf "$ROOT.tmp"/var/cache/apt/archives/*.deb
[ -x "$ROOT.tmp/usr/lib/systemd/systemd" ] || fail "no usr/lib/systemd/systemd in the $SUITE root"
[ -x "$ROOT.tmp/usr/bin/python3" ] || fail "no usr/bin/python3 in the $SUITE root"
[ -x "$ROOT.tmp/bin/kill" ] || fail "no bin/kill in the $SUITE root"
v=$(chroot "$ROOT.tmp" /usr/lib/systemd/systemd --version 2>/dev/null | head -n 1) ||
    fail "systemd --version failed in the $SUITE root"
echo "$STAMP_TEXT" >"$ROOT.tmp/.guestlogd-complete"
mv "$ROOT.tmp" "$ROOT"
rm -f "$UNAVAIL"
echo "systemd: $v at $ROOT ($(( $(date +%s) - t0 )) s)"
