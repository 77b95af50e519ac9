#!/usr/bin/env bash
# Stop a libvirt instance started by boot.sh and remove everything it left
# (saving its journal to HOSTDIR/systemd-journal.log first); see
# tests/systemd/stop.sh. Usage: stop.sh PID1 | --stale | --all
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
exec bash "$LV_SYSTEMD/stop.sh" "$@"
