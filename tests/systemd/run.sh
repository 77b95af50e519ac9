#!/usr/bin/env bash
# Run a command inside the namespaces (pid, mount, net, uts, root, cwd /) of
# the systemd started by boot.sh, with a clean environment (add variables with
# `env VAR=value CMD`); stdin/stdout/stderr and the exit code pass through.
# The command is not part of a unit (it stays in the caller's cgroup).
# Usage: run.sh PID1 CMD [ARGS...]
# net and uts are entered for instances booted with SD_NET=1 and their own
# /etc/hostname (virsh reaches its peer only through the instance's links,
# and libvirt names itself by hostname); without SD_NET the net namespace is
# the host's, so entering it changes nothing.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
[ $# -ge 2 ] || { echo "usage: $0 PID1 CMD [ARGS...]" >&2; exit 64; }
P=$1; shift
exec nsenter -t "$P" -m -p -n -u -r -w /usr/bin/env -i PATH="$SD_PATH" LANG=C.UTF-8 "$@"
