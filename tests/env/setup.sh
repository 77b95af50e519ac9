#!/usr/bin/env bash
# Provision everything the guestlogd tests need on a Debian 12 machine (root).
# Idempotent; fast when already done.
#   /var/cache/guestlogd-test/venv/bin/python   (asyncvarlink, varlink)
#   /var/cache/guestlogd-test/bin/varlinkctl    (or varlinkctl.unavailable)
#   socat, setpriv (util-linux), tmux, lintian, man-db
#   cargo-deb, dpkg-dev (packaging/build-deb --tools)
#   qemu-system-x86_64 + /var/cache/guestlogd-test/guest/ (or *.unavailable)
#   /var/cache/guestlogd-test/trixie/, libvirt-root/ (or systemd/libvirt.unavailable)
#   node_exporter, systemd-report, journal-root/, prometheus-client (tests/env/fleet.sh)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
W=/var/cache/guestlogd-test
VENV=$W/venv
PY=$(command -v python3 || echo /usr/bin/python3)
mkdir -p "$W"

venv_ok() {
    "$VENV/bin/python" -c 'import asyncvarlink, varlink, mfusepy' >/dev/null 2>&1
}

# --- apt packages (only if something is missing) ---
need=()
command -v socat >/dev/null || need+=(socat)
command -v setpriv >/dev/null || need+=(util-linux)
command -v tmux >/dev/null || need+=(tmux)
# libfuse 3 for the FUSE file system that stands in for a hung disk.
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3 ' || need+=(libfuse3-3)
# The packages' checks: lintian, and man-db for `man -l` (tests/manpages.rs).
command -v lintian >/dev/null || need+=(lintian)
command -v man >/dev/null || need+=(man-db)
if ! venv_ok; then
    t=$(mktemp -d)
    if ! "$PY" -m venv "$t/v" >/dev/null 2>&1; then
        need+=(python3-venv)
        [ -x "$PY" ] || need+=(python3)
    fi
    rm -rf "$t"
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- Python venv with asyncvarlink + varlink ---
if ! venv_ok; then
    echo "setup: creating $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'asyncvarlink==0.3.*' 'varlink==31.*' 'mfusepy==3.1.*'
    venv_ok || { echo "setup: import asyncvarlink/varlink/mfusepy failed in $VENV" >&2; exit 1; }
fi

# --- What packaging/build-deb needs (cargo-deb, dpkg-dev) ---
bash "$HERE/../../packaging/build-deb" --tools

# --- varlinkctl (systemd from forky); never fails setup ---
bash "$HERE/varlinkctl.sh"

# --- QEMU + console-test guest (kernel, initramfs); never fails setup ---
bash "$HERE/guest.sh"
bash "$HERE/systemd.sh"  # trixie root for tests/systemd/ (systemd 257 as PID 1); never fails setup
bash "$HERE/libvirt.sh"  # libvirt + QEMU root for tests/libvirt/ (copy of the trixie root); never fails setup
bash "$HERE/fleet.sh"    # node_exporter, systemd-report, a journal-remote root, prometheus-client; never fails setup

echo "setup: ok ($("$VENV/bin/python" -c 'import importlib.metadata as m; print("asyncvarlink", m.version("asyncvarlink"), "varlink", m.version("varlink"))'); varlinkctl: $([ -f $W/varlinkctl.unavailable ] && echo unavailable || echo ok))"
