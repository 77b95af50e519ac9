# Sourced by tests/libvirt/*.sh: the tests/systemd/ harness, pointed at the
# libvirt root (tests/env/libvirt.sh) and entering it with pivot_root.
# Exported so that the watchdog and stop.sh that boot.sh starts see them too.
export SD_ROOT=/var/cache/guestlogd-test/libvirt-root
export SD_SETUP=libvirt
export SD_STATE=/run/guestlogd-libvirt
export SD_NAME=guestlogd-libvirt
export SD_PIVOT=1
LV_SYSTEMD=$(cd "$(dirname "${BASH_SOURCE[0]}")/../systemd" && pwd)
