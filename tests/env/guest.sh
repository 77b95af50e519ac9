#!/usr/bin/env bash
# Provision a QEMU guest for guestlogd's console tests. Idempotent.
#   qemu-system-x86_64 (from bookworm-backports: bookworm's 7.2 would remove
#     the preinstalled qemu-utils 10.0)       or $W/qemu.unavailable
#   $G/sercon-port  fw_cfg file: SeaBIOS prints its banner on the serial port
#   $G/vmlinuz      kernel of linux-image-cloud-amd64
#   $G/initrd.gz    busybox-static + tests/env/guest-init.sh as /init
#   $G/cmdline      the -append string to boot it with
#                                             or $W/guest.unavailable
# Never fails: on error it prints "SKIPPED: qemu unavailable: <reason>" or
# "SKIPPED: guest unavailable: <reason>" and writes the reason to the
# *.unavailable file (removed on success).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
W=/var/cache/guestlogd-test
G=$W/guest
LOG=$W/guest.log
PY=$(command -v python3 || echo /usr/bin/python3)
# loglevel=6 prints KERN_NOTICE and worse: the kernel's "Linux version" banner
# (a NOTICE) and ~15 more lines, not the ~300 INFO lines of the default (7);
# "quiet" (4) and loglevel=5 hide the banner. /init runs "dmesg -n 1" first,
# so after that the kernel prints only "reboot: Power down" (an EMERG).
# panic=-1 plus QEMU's -no-reboot makes QEMU exit if /init dies.
# edd=off drops "Probing EDD... ok" (no newline) before the banner.
CMDLINE="console=ttyS0 loglevel=6 panic=-1 edd=off"
mkdir -p "$G"
: >"$LOG"

updated=
apt_update() {
    [ -n "$updated" ] && return 0
    updated=1
    timeout 600 apt-get update -qq >>"$LOG" 2>&1
}
tail_log() { tail -n 3 "$LOG" | tr '\n' ' '; }

# --- QEMU ---
qemu_fail() {
    echo "$*" >"$W/qemu.unavailable"
    echo "SKIPPED: qemu unavailable: $*"
}
qemu() {
    qemu-system-x86_64 --version >/dev/null 2>&1 && return 0
    local M S=/etc/apt/sources.list.d/bookworm-backports.sources
    if [ ! -f "$S" ]; then
        M=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
        [ -n "$M" ] || { qemu_fail "no Debian mirror in /etc/apt/sources.list.d/debian.sources"; return 1; }
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$M" >"$S"
        updated=
    fi
    echo "setup: apt-get install -t bookworm-backports qemu-system-x86"
    apt_update || { qemu_fail "apt-get update failed: $(tail_log)"; return 1; }
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 >>"$LOG" 2>&1 ||
        { qemu_fail "apt-get install qemu-system-x86 failed: $(tail_log)"; return 1; }
    qemu-system-x86_64 --version >/dev/null 2>&1 ||
        { qemu_fail "qemu-system-x86_64 --version fails after install"; return 1; }
}
qemu && rm -f "$W/qemu.unavailable"
# SeaBIOS: print to the serial port 0x3f8 (fw_cfg etc/sercon-port, 2 bytes LE).
# QEMU 10 with -nographic -nodefaults (no VGA) already does this by itself.
printf '\370\003' >"$G/sercon-port"

# --- guest kernel + initramfs ---
guest_fail() {
    echo "$*" >"$W/guest.unavailable"
    echo "SKIPPED: guest unavailable: $*"
    exit 0
}
# apt-get download PKG into $T, running apt-get update once if that fails
download() {
    (cd "$T" && apt-get download "$1") >>"$LOG" 2>&1 && return 0
    apt_update && (cd "$T" && apt-get download "$1") >>"$LOG" 2>&1
}

T=$G/dl
rm -rf "$T"
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT

if [ ! -s "$G/vmlinuz" ]; then
    echo "setup: guest kernel"
    dep() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" {print $2; exit}'; }
    K=$(dep)
    [ -n "$K" ] || { apt_update; K=$(dep); }
    [ -n "$K" ] || guest_fail "cannot resolve linux-image-cloud-amd64's kernel package"
    download "$K" || guest_fail "apt-get download $K failed: $(tail_log)"
    (cd "$T" && dpkg --fsys-tarfile ./*.deb | tar -x --wildcards './boot/vmlinuz-*') >>"$LOG" 2>&1 ||
        guest_fail "no ./boot/vmlinuz-* in $K"
    set -- "$T"/boot/vmlinuz-*
    [ -s "$1" ] || guest_fail "no ./boot/vmlinuz-* in $K"
    mv -f "$1" "$G/vmlinuz.tmp" && mv -f "$G/vmlinuz.tmp" "$G/vmlinuz"
    rm -rf "$T"/*
fi

if [ ! -x "$G/busybox" ]; then
    echo "setup: guest busybox"
    download busybox-static || guest_fail "apt-get download busybox-static failed: $(tail_log)"
    (cd "$T" && dpkg --fsys-tarfile ./busybox-static_*.deb | tar -x ./bin/busybox) >>"$LOG" 2>&1 ||
        guest_fail "no ./bin/busybox in busybox-static"
    mv -f "$T/bin/busybox" "$G/busybox.tmp" && mv -f "$G/busybox.tmp" "$G/busybox"
    rm -rf "$T"/*
fi

# rebuild the initramfs when /init or busybox changed
STAMP=$(cat "$HERE/guest-init.sh" "$G/busybox" | sha256sum | cut -d' ' -f1)
if [ ! -s "$G/initrd.gz" ] || [ "$(cat "$G/initrd.stamp" 2>/dev/null)" != "$STAMP" ]; then
    echo "setup: guest initramfs"
    "$PY" - "$G/busybox" "$HERE/guest-init.sh" "$G/initrd.gz.tmp" <<'PYEOF' >>"$LOG" 2>&1 ||
# Write a gzip'd newc cpio: the kernel unpacks it as the initramfs.
import gzip, stat, sys

busybox, init, out = sys.argv[1:4]
buf = bytearray()
ino = 1


def add(name, mode, data=b"", rdev=(0, 0)):
    global ino
    n = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0]
    buf.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + n)
    buf.extend(b"\0" * (-len(buf) % 4))
    buf.extend(data)
    buf.extend(b"\0" * (-len(buf) % 4))
    ino += 1


for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root"]:
    add(d, stat.S_IFDIR | 0o755)
add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))  # stdin/out of /init
add("bin/busybox", stat.S_IFREG | 0o755, open(busybox, "rb").read())
add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
add("init", stat.S_IFREG | 0o755, open(init, "rb").read())
add("TRAILER!!!", 0)
with open(out, "wb") as f:
    f.write(gzip.compress(bytes(buf), 6, mtime=0))
PYEOF
        guest_fail "building the initramfs failed: $(tail_log)"
    mv -f "$G/initrd.gz.tmp" "$G/initrd.gz"
    echo "$STAMP" >"$G/initrd.stamp"
fi

echo "$CMDLINE" >"$G/cmdline"
rm -f "$W/guest.unavailable"
echo "guest: $G (vmlinuz, initrd.gz, cmdline: $CMDLINE; qemu: $([ -f "$W/qemu.unavailable" ] && echo unavailable || qemu-system-x86_64 --version | head -n 1))"
