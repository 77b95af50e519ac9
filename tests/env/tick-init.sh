#!/bin/sh
# /init of the ticking guest for the live-migration tests (busybox sh in an
# initramfs that tests/common/libvirt_pair.rs builds from tests/env/guest.sh's
# busybox). From boot on, with no input, it prints to both serial ports
#   "GUEST READY\r\n", then "TICK %06d up=SECONDS\r\n" every ~100 ms,
# numbered from 1, so that a log or a listener on either port shows which
# lines it got, lost or got twice, whichever host the guest ran on.
# The kernel's own messages go to the console until /init quiets them: the
# boot part of the serial log (its "Linux version" banner) comes first.
/bin/busybox dmesg -n 1 # no kernel line from here on may split a TICK line
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/null >/dev/ttyS0 2>&1
exec 3>/dev/ttyS1
echo "GUEST READY"
echo "GUEST READY" >&3
i=1
while :; do
    read -r up _ </proc/uptime
    l=$(printf 'TICK %06d up=%s' "$i" "$up")
    echo "$l"
    echo "$l" >&3
    i=$((i + 1))
    usleep 100000
done
