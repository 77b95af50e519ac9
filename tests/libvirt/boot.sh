#!/usr/bin/env bash
# Boot the libvirt root (systemd 257, libvirtd, virtlogd, QEMU; cached by
# tests/env/libvirt.sh) as PID 1 of private pid/mount/cgroup/uts/ipc
# namespaces, entered with pivot_root, on a fresh overlay of the cached root
# (never modified), with HOSTDIR bind-mounted at /host.
#   PID1=$(tests/libvirt/boot.sh HOSTDIR)
# Prints the host pid of that systemd once `systemctl is-system-running` says
# running or degraded (libvirtd and virtlogd are enabled and so already up).
# Everything else is tests/systemd/boot.sh's: SD_OWNER_PID, SD_CONSOLE_LOG,
# exit 2 when the root is missing (see libvirt.unavailable).
# Inside: ctl.sh PID1 CMD...; stop: stop.sh PID1.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/common.sh"
exec bash "$LV_SYSTEMD/boot.sh" "$@"
