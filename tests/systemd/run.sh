#!/usr/bin/env bash
# Run a command inside the namespaces (pid, mount, root, cwd /) of the systemd
# started by boot.sh, with a clean environment (add variables with
# `env VAR=value CMD`); stdin/stdout/stderr and the exit code pass through.
# The command is not part of a unit (it stays in the caller's cgroup).
# Usage: run.sh PID1 CMD [ARGS...]
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
[ $# -ge 2 ] || { echo "usage: $0 PID1 CMD [ARGS...]" >&2; exit 64; }
P=$1; shift
exec nsenter -t "$P" -m -p -r -w /usr/bin/env -i PATH="$SD_PATH" LANG=C.UTF-8 "$@"
