#!/usr/bin/env bash
# What the fleet tests (tests/metrics.rs, tests/journal_export.rs) need,
# each part optional. Never fails: a part that cannot be provided leaves
# $W/<part>.unavailable with the reason (removed on success).
#   $W/node-exporter/usr/bin/prometheus-node-exporter
#       Debian 12's prometheus-node-exporter, unpacked (never started as a
#       service on this machine)
#   $W/report/usr/lib/systemd/systemd-report.standalone
#       systemd 262's systemd-report from forky, unpacked
#   $W/journal-root/  a copy of the trixie root (tests/env/systemd.sh) with
#       systemd-journal-remote (journal-remote and journal-upload)
#   prometheus-client in the test venv
# Idempotent: each part is skipped when present.
set -uo pipefail

W=/var/cache/guestlogd-test
mkdir -p "$W"
M=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)

unavailable() { echo "$2" >"$W/$1.unavailable"; echo "SKIPPED: $1 unavailable: $2"; }

# --- prometheus-client in the venv ---
if [ -x "$W/venv/bin/python" ] && ! "$W/venv/bin/python" -c 'import prometheus_client' 2>/dev/null; then
    "$W/venv/bin/pip" install -q --disable-pip-version-check 'prometheus-client>=0.20,<1' ||
        echo "setup: pip install prometheus-client failed"
fi

# --- node exporter, unpacked from Debian 12's package ---
node_exporter() {
    local d=$W/node-exporter t
    [ -x "$d/usr/bin/prometheus-node-exporter" ] && return 0
    t=$(mktemp -d)
    if ! (cd "$t" && apt-get download -q prometheus-node-exporter >/dev/null 2>&1); then
        apt-get update -qq >/dev/null 2>&1
        (cd "$t" && apt-get download -q prometheus-node-exporter >"$W/node-exporter.log" 2>&1) || {
            unavailable node-exporter "apt-get download prometheus-node-exporter failed: $(tail -n 2 "$W/node-exporter.log" | tr '\n' ' ')"
            rm -rf "$t"; return 0; }
    fi
    rm -rf "$d.tmp" && mkdir -p "$d.tmp" && dpkg -x "$t"/prometheus-node-exporter_*.deb "$d.tmp" &&
        [ -x "$d.tmp/usr/bin/prometheus-node-exporter" ] && rm -rf "$d" && mv "$d.tmp" "$d" ||
        unavailable node-exporter "unpacking prometheus-node-exporter failed"
    rm -rf "$t"
    [ -x "$d/usr/bin/prometheus-node-exporter" ] && rm -f "$W/node-exporter.unavailable"
}

# --- systemd-report from forky, with the private apt state of varlinkctl.sh ---
report() {
    local d=$W/report t
    [ -x "$d/usr/lib/systemd/systemd-report.standalone" ] && { rm -f "$W/report.unavailable"; return 0; }
    [ -n "$M" ] || { unavailable report "no Debian mirror in /etc/apt/sources.list.d/debian.sources"; return 0; }
    mkdir -p "$W/apt/parts" "$W/apt/lists/partial" "$W/apt/cache/archives/partial"
    printf 'Types: deb\nURIs: %s\nSuites: forky\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$M" >"$W/apt/parts/x.sources"
    local A=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$W/apt/parts"
        -o "Dir::State::Lists=$W/apt/lists" -o "Dir::Cache=$W/apt/cache"
        -o APT::Sandbox::User=root -o Acquire::Retries=3)
    t=$(mktemp -d)
    if ! (cd "$t" && apt-get "${A[@]}" download systemd-report/forky >"$W/report.log" 2>&1); then
        apt-get "${A[@]}" update -qq >>"$W/report.log" 2>&1
        (cd "$t" && apt-get "${A[@]}" download systemd-report/forky >>"$W/report.log" 2>&1) || {
            unavailable report "apt-get download systemd-report/forky failed: $(tail -n 2 "$W/report.log" | tr '\n' ' ')"
            rm -rf "$t"; return 0; }
    fi
    rm -rf "$d.tmp" && mkdir -p "$d.tmp" && dpkg -x "$t"/systemd-report_*.deb "$d.tmp" &&
        "$d.tmp/usr/lib/systemd/systemd-report.standalone" --version >/dev/null 2>&1 &&
        rm -rf "$d" && mv "$d.tmp" "$d" && rm -f "$W/report.unavailable" ||
        unavailable report "systemd-report from forky does not run here"
    rm -rf "$t"
}

# --- a trixie root with systemd-journal-remote, as tests/env/libvirt.sh builds its own ---
journal_root() {
    local BASE=$W/trixie ROOT=$W/journal-root T=$W/journal-root.tmp PKGS="systemd-journal-remote"
    local LOG=$W/journal-root.log stamp
    stamp="base=$(cat "$BASE/.guestlogd-complete" 2>/dev/null) pkgs=$PKGS v1"
    if [ -f "$ROOT/.guestlogd-complete" ] && [ "$(cat "$ROOT/.guestlogd-complete")" = "$stamp" ] &&
        [ -x "$ROOT/usr/lib/systemd/systemd-journal-remote" ]; then
        rm -f "$W/journal-root.unavailable"; return 0
    fi
    [ -f "$BASE/.guestlogd-complete" ] || { unavailable journal-root "no cached trixie root (run tests/env/systemd.sh)"; return 0; }
    [ -n "$M" ] || { unavailable journal-root "no Debian mirror"; return 0; }
    grep -q "lowerdir=$ROOT" /proc/mounts 2>/dev/null &&
        { unavailable journal-root "$ROOT is out of date but in use by a mounted overlay"; return 0; }
    echo "setup: journal root $ROOT (copy of $BASE + $PKGS)"
    rm -rf --one-file-system "$T"
    cp -a --reflink=auto "$BASE" "$T" || { unavailable journal-root "copying $BASE failed"; return 0; }
    rm -f "$T/.guestlogd-complete"
    for m in proc sys dev; do mount --rbind "/$m" "$T/$m" && mount --make-rslave "$T/$m"; done
    echo "deb $M trixie main" >"$T/etc/apt/sources.list"
    cp -L /etc/resolv.conf "$T/etc/resolv.conf" 2>/dev/null || true
    printf '#!/bin/sh\nexit 101\n' >"$T/usr/sbin/policy-rc.d"; chmod 755 "$T/usr/sbin/policy-rc.d"
    local ok=1
    { timeout 600 chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      timeout 900 chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $PKGS; } >"$LOG" 2>&1 || ok=0
    for m in dev sys proc; do umount -l "$T/$m" 2>/dev/null || true; done
    rm -f "$T/usr/sbin/policy-rc.d" "$T/etc/resolv.conf"
    rm -rf "$T"/var/cache/apt/archives/*.deb "$T"/var/lib/apt/lists/*_Packages* "$T"/var/cache/apt/*.bin
    if [ $ok = 0 ] || [ ! -x "$T/usr/lib/systemd/systemd-journal-remote" ]; then
        rm -rf --one-file-system "$T"
        unavailable journal-root "apt-get install $PKGS failed: $(tail -n 3 "$LOG" | tr '\n' ' ')"; return 0
    fi
    echo "$stamp" >"$T/.guestlogd-complete"
    rm -rf --one-file-system "$ROOT"; mv "$T" "$ROOT"
    rm -f "$W/journal-root.unavailable"
    echo "journal root: $(du -sm "$ROOT" | cut -f1) MiB at $ROOT"
}

node_exporter
report
journal_root
exit 0
