#!/usr/bin/env bash
# Run a command inside the libvirt instance started by boot.sh (its pid, mount,
# net, uts and root namespaces, cwd /), with a clean environment, virsh talking to
# qemu:///system and no pager; stdio and the exit code pass through.
# Usage: ctl.sh PID1 CMD [ARGS...]   e.g.  ctl.sh "$PID1" virsh list --all
#                                           ctl.sh "$PID1" systemctl status virtlogd
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
[ $# -ge 2 ] || { echo "usage: $0 PID1 CMD [ARGS...]" >&2; exit 64; }
P=$1; shift
exec bash "$LV_SYSTEMD/run.sh" "$P" env LIBVIRT_DEFAULT_URI=qemu:///system \
    SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 PAGER=cat "$@"
