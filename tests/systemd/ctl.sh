#!/usr/bin/env bash
# Run systemctl inside the systemd started by boot.sh, with a clean environment
# and no pager. Usage: ctl.sh PID1 ARGS...   (exit code is systemctl's)
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 PID1 ARGS..." >&2; exit 64; }
P=$1; shift
exec nsenter -t "$P" -m -p -r -w /usr/bin/env -i PATH="$SD_PATH" LANG=C.UTF-8 \
    SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 systemctl "$@"
