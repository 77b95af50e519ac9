#!/usr/bin/env bash
# Provide a Debian trixie root with libvirt 11.x + QEMU (the monolithic
# libvirtd, virtlogd, virsh) to boot as PID 1 of a private namespace
# (tests/libvirt/boot.sh), cached at $W/libvirt-root and never modified by
# tests (they boot an overlay on top of it). It is a copy of the cached trixie
# root (tests/env/systemd.sh; never installed into) plus, from trixie:
#   qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu
#   libvirt-daemon-log libvirt-clients
# and the test guest's kernel and initramfs (tests/env/guest.sh) in
# /var/lib/libvirt/boot/ (vmlinuz, initrd.gz, cmdline).
# Idempotent: skipped when the stamp matches this script's parameters and the
# guest files. Never fails: on error it prints "SKIPPED: libvirt unavailable:
# <reason>" and writes the reason to $W/libvirt.unavailable (removed on success).
set -euo pipefail

W=/var/cache/guestlogd-test
BASE=$W/trixie
ROOT=$W/libvirt-root
T=$ROOT.tmp
G=$W/guest
STAMP=$ROOT/.guestlogd-complete
UNAVAIL=$W/libvirt.unavailable
LOG=$W/libvirt.log
PKGS="qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-log libvirt-clients"

# Unmount whatever is mounted under $1, then remove it.
wipe() {
    local m
    for m in $(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$1"
}

fail() {
    [ -d "$T" ] && wipe "$T"
    mkdir -p "$W"
    echo "$*" >"$UNAVAIL"
    echo "SKIPPED: libvirt unavailable: $*"
    exit 0
}

stamp_text() {
    echo "base=$(cat "$BASE/.guestlogd-complete" 2>/dev/null) pkgs=$PKGS" \
        "guest=$(cat "$G/vmlinuz" "$G/initrd.gz" "$G/cmdline" 2>/dev/null | sha256sum | cut -c1-16) v1"
}

works() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_text)" ] &&
        [ -x "$ROOT/usr/sbin/libvirtd" ] && [ -x "$ROOT/usr/sbin/virtlogd" ] &&
        [ -x "$ROOT/usr/bin/virsh" ] && [ -x "$ROOT/usr/bin/qemu-system-x86_64" ]
}

if works; then
    rm -f "$UNAVAIL"
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "not root"
[ -f "$BASE/.guestlogd-complete" ] ||
    fail "no cached trixie root at $BASE ($(cat "$W/systemd.unavailable" 2>/dev/null || echo 'run tests/env/systemd.sh'))"
[ -s "$G/vmlinuz" ] && [ -s "$G/initrd.gz" ] && [ -s "$G/cmdline" ] ||
    fail "no test guest in $G ($(cat "$W/guest.unavailable" 2>/dev/null || echo 'run tests/env/guest.sh'))"
M=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$M" ] || fail "no Debian mirror in /etc/apt/sources.list.d/debian.sources"
if grep -q "lowerdir=$ROOT" /proc/mounts 2>/dev/null; then
    fail "$ROOT is out of date but in use by a mounted overlay (stop running instances)"
fi

echo "setup: libvirt root $ROOT (copy of $BASE + $PKGS)"
t0=$(date +%s)
wipe "$T"
cp -a --reflink=auto "$BASE" "$T" || fail "copying $BASE failed"
rm -f "$T/.guestlogd-complete"
trap 'for m in dev sys proc; do umount -l "$T/$m" 2>/dev/null || true; done' EXIT
for m in proc sys dev; do mount --rbind "/$m" "$T/$m" && mount --make-rslave "$T/$m" ||
    fail "bind-mounting /$m failed"; done
echo "deb $M trixie main" >"$T/etc/apt/sources.list"
cp -L /etc/resolv.conf "$T/etc/resolv.conf" 2>/dev/null || true
# No service starts during the install (there is no systemd running in there).
printf '#!/bin/sh\nexit 101\n' >"$T/usr/sbin/policy-rc.d"
chmod 755 "$T/usr/sbin/policy-rc.d"
in_root() { # in_root SECONDS CMD...
    timeout "$1" chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "${@:2}"
}
{ in_root 600 apt-get update -q &&
    in_root 900 apt-get install -y -q --no-install-recommends $PKGS; } >"$LOG" 2>&1 ||
    fail "apt-get install in the libvirt root failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"
for m in dev sys proc; do umount -l "$T/$m" || true; done
trap - EXIT
rm -f "$T/usr/sbin/policy-rc.d" "$T/etc/resolv.conf"
# Keep downloaded .debs and the package lists (88 MiB) out of the cache.
rm -rf "$T"/var/cache/apt/archives/*.deb "$T"/var/lib/apt/lists/*_Packages* "$T"/var/cache/apt/*.bin
for f in usr/sbin/libvirtd usr/sbin/virtlogd usr/bin/virsh usr/bin/qemu-system-x86_64; do
    [ -x "$T/$f" ] || fail "no $f in the libvirt root after the install"
done
mkdir -p "$T/var/lib/libvirt/boot"
cp "$G/vmlinuz" "$G/initrd.gz" "$G/cmdline" "$T/var/lib/libvirt/boot/"
v=$(chroot "$T" /usr/sbin/libvirtd --version 2>/dev/null | head -n 1) || fail "libvirtd --version failed"
q=$(chroot "$T" /usr/bin/qemu-system-x86_64 --version 2>/dev/null | head -n 1) || fail "qemu --version failed"
stamp_text >"$T/.guestlogd-complete"
wipe "$ROOT"
mv "$T" "$ROOT"
rm -f "$UNAVAIL"
echo "libvirt: $v, $q at $ROOT ($(( $(date +%s) - t0 )) s, $(du -sm "$ROOT" | cut -f1) MiB)"
