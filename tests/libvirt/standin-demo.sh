#!/usr/bin/env bash
# Replace virtlogd with another daemon (standin.py, which answers nothing) in
# the two ways that keep libvirt's units valid, and show what the replacement
# gets and what libvirt then says:
#   A  a drop-in for virtlogd.service replacing its ExecStart
#   B  drop-ins for virtlogd.socket and virtlogd-admin.socket pointing
#      Service= at standin.service, with virtlogd.service masked
# Usage: tests/libvirt/standin-demo.sh   (root; KEEP=1 keeps the work dir)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=/var/cache/guestlogd-test
if [ ! -f "$W/libvirt-root/.guestlogd-complete" ]; then
    echo "SKIPPED: libvirt unavailable: $(cat "$W/libvirt.unavailable" 2>/dev/null || echo 'run tests/env/libvirt.sh')"
    exit 0
fi
DIR=$(mktemp -d /tmp/guestlogd-lv-standin.XXXXXX)
PID1=
trap '"$HERE/stop.sh" "$PID1" || true; [ -n "${KEEP:-}" ] && echo "kept $DIR" || rm -rf "$DIR"' EXIT
cp "$HERE/standin.py" "$DIR/"
PID1=$("$HERE/boot.sh" "$DIR")
R=/proc/$PID1/root
E=$R/etc/systemd/system
lv() { "$HERE/ctl.sh" "$PID1" "$@"; }
states() { for u in virtlogd.socket virtlogd-admin.socket virtlogd.service standin.service libvirtd.service; do
    printf '%s=%s ' "$u" "$(lv systemctl show -p ActiveState --value "$u")"; done; echo; }
xml() { cat <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>256</memory>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>/var/lib/libvirt/boot/vmlinuz</kernel>
<initrd>/var/lib/libvirt/boot/initrd.gz</initrd><cmdline>console=ttyS0</cmdline></os>
<devices><serial type='pty'><log file='/var/log/libvirt/qemu/$1-serial0.log' append='off'/></serial>
<console type='pty'/><memballoon model='none'/></devices></domain>
XML
}
try_domain() { # try_domain NAME: virsh create; show its outcome and the stand-in's log
    xml "$1" >"$DIR/$1.xml"
    echo "virsh create $1: $(timeout 60 "$HERE/ctl.sh" "$PID1" virsh create "/host/$1.xml" 2>&1 | tr '\n' ' ')"
    timeout 60 "$HERE/ctl.sh" "$PID1" virsh destroy "$1" >/dev/null 2>&1 || true
    echo "--- standin.log"; cat "$DIR/standin.log" 2>/dev/null; : >"$DIR/standin.log"
    states
}

echo "== booted: $(states)"
echo "== A: virtlogd.service drop-in replacing ExecStart"
mkdir -p "$E/virtlogd.service.d"
printf '[Service]\nExecStart=\nExecStart=/usr/bin/python3 /host/standin.py\nExecReload=\n' \
    >"$E/virtlogd.service.d/standin.conf"
lv systemctl daemon-reload
lv systemctl stop virtlogd.service   # the sockets stay, so libvirtd does too
echo "after stop: $(states)"
try_domain a1

echo "== B: virtlogd.socket and virtlogd-admin.socket with Service=standin.service"
# Stop the old service BEFORE re-pointing the sockets: a socket only follows
# the service it currently names, so a service stopped after the
# daemon-reload leaves the socket "running" (not listening) and libvirt hangs.
lv systemctl stop virtlogd.service
rm -r "$E/virtlogd.service.d"
lv systemctl mask virtlogd.service
printf '[Unit]\nDescription=virtlogd stand-in\n[Service]\nType=notify\nExecStart=/usr/bin/python3 /host/standin.py\n' \
    >"$E/standin.service"
for s in virtlogd virtlogd-admin; do
    mkdir -p "$E/$s.socket.d"
    printf '[Socket]\nService=standin.service\n' >"$E/$s.socket.d/standin.conf"
done
lv systemctl daemon-reload
echo "re-pointed: $(states)"
echo "virtlogd.socket Triggers=$(lv systemctl show -p Triggers --value virtlogd.socket) SubState=$(lv systemctl show -p SubState --value virtlogd.socket)"
try_domain b1
