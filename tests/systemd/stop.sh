#!/usr/bin/env bash
# Stop a systemd started by boot.sh (SIGRTMIN+4, SIGKILL after 10 s) and remove
# its cgroups, overlay mount and state. Idempotent; trap-friendly:
#   PID1=; trap 'tests/systemd/stop.sh "$PID1"' EXIT
#   PID1=$(tests/systemd/boot.sh "$DIR")
# Usage: stop.sh PID1      (an empty PID1 is a no-op)
#        stop.sh --stale   instances whose systemd is gone (crashed, or a reboot)
#        stop.sh --all     every instance (e.g. at the end of a CI run)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 PID1|--stale|--all" >&2; exit 64; }
[ -n "$1" ] || exit 0
[ -d "$SD_STATE" ] || { [ "$1" = --all ] || [ "$1" = --stale ] && exit 0; sd_log "no instance with PID1 $1"; exit 1; }
rc=0 found=
for inst in "$SD_STATE"/*/; do
    inst=${inst%/}
    [ -d "$inst" ] || continue
    case "$1" in
    --all) ;;
    --stale) sd_alive "$inst/pid1" && continue
             # Booting right now (no pid1 yet, unshare alive): not stale.
             [ ! -s "$inst/pid1" ] && sd_alive "$inst/unshare" && continue
             # Created less than 60 s ago without pid files: a boot.sh in progress.
             [ ! -s "$inst/unshare" ] && [ -n "$(find "$inst" -maxdepth 0 -mmin -1)" ] && continue ;;
    *) [ "$(sd_pid "$inst/pid1")" = "$1" ] || continue ;;
    esac
    found=1
    sd_cleanup "$inst" || rc=1
done
if [ -z "$found" ] && [ "$1" != --all ] && [ "$1" != --stale ]; then
    sd_log "no instance with PID1 $1"
    exit 1
fi
exit $rc
