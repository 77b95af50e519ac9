#!/bin/sh
# /init of the guestlogd console-test guest (busybox sh in an initramfs built
# by tests/env/guest.sh). Talks a line protocol on the serial console ttyS0.
#
# The tty stays in canonical mode with its default settings (stty sane):
# ECHO on, ICRNL, ONLCR. So every line the guest writes ends in "\r\n", and
# every byte the host sends is echoed back by the guest's tty (that echo is
# guest output, and guestlogd logs it). Send each command after the previous
# one has finished; input is echoed as soon as the tty receives it.
#   host sends            guest prints (byte-exact)
#   (boot)                "GUEST READY\r\n"
#   "echo TEXT\n"         "echo TEXT\r\n" (echo)  "ECHO TEXT\r\n"
#   "count N [MS]\n"      "count N [MS]\r\n" (echo)  "SEQ 000001\r\n" ...
#                         "SEQ <N, %06d>\r\n"  "COUNT DONE N\r\n"
#                         (MS milliseconds between lines; default 0)
#   "flood BYTES\n"       "flood BYTES\r\n" (echo)  then ceil(BYTES/64) lines
#                         "F%08d " + 53 x 'x' (63 chars, numbered from 1,
#                         65 bytes each with "\r\n"), then "FLOOD DONE\r\n"
#   "stty ARGS\n"         echo, runs stty ARGS on ttyS0, "STTY OK\r\n"
#                         (or "STTY FAIL\r\n"); "stty -echo" turns echo off
#   "poweroff\n"          echo, then poweroff -f (QEMU exits)
#   "\n" (empty line)     echo "\r\n" only
#   anything else         echo, "ERR unknown: <line>\r\n"
# "\r" counts as a line end too (ICRNL), so "\r\n" gives an extra empty line.
# Canonical mode: a line longer than 4095 bytes is cut by the kernel.

/bin/busybox dmesg -n 1 # first: no kernel messages on the console from here on
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/ttyS0 >/dev/ttyS0 2>&1
stty sane

num() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; }

set -f # no globbing when splitting command lines
echo "GUEST READY"
while IFS= read -r line; do
    # shellcheck disable=SC2086
    set -- $line
    case "$1" in
    '') ;;
    echo)
        if [ "$line" = echo ]; then echo "ECHO"; else printf 'ECHO %s\n' "${line#echo }"; fi
        ;;
    count)
        n=${2:-}
        d=${3:-0}
        if ! num "$n" || ! num "$d"; then
            printf 'ERR usage: count N [DELAY_MS]\n'
        elif [ "$d" -eq 0 ]; then
            awk -v n="$n" 'BEGIN { for (i = 1; i <= n; i++) printf "SEQ %06d\n", i }'
            echo "COUNT DONE $n"
        else
            i=1
            while [ "$i" -le "$n" ]; do
                printf 'SEQ %06d\n' "$i"
                [ "$i" -lt "$n" ] && usleep $((d * 1000))
                i=$((i + 1))
            done
            echo "COUNT DONE $n"
        fi
        ;;
    flood)
        if ! num "${2:-}"; then
            printf 'ERR usage: flood BYTES\n'
        else
            awk -v b="$2" 'BEGIN {
                p = sprintf("%53s", ""); gsub(/ /, "x", p)
                n = int((b + 63) / 64)
                for (i = 1; i <= n; i++) printf "F%08d %s\n", i, p
            }'
            echo "FLOOD DONE"
        fi
        ;;
    stty)
        shift
        # shellcheck disable=SC2068
        if stty $@; then echo "STTY OK"; else echo "STTY FAIL"; fi
        ;;
    poweroff)
        poweroff -f
        ;;
    *)
        printf 'ERR unknown: %s\n' "$line"
        ;;
    esac
done
poweroff -f
