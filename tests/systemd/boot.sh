#!/usr/bin/env bash
# Boot systemd (Debian trixie, cached by tests/env/systemd.sh) as PID 1 of
# private pid/mount/cgroup/uts/ipc namespaces, on an overlay of the cached root
# (which is never modified), with HOSTDIR bind-mounted at /host.
#   PID1=$(tests/systemd/boot.sh HOSTDIR)
# Prints only the host pid of that systemd on stdout, once it is ready
# (systemctl is-system-running says running or degraded; the state is reported
# on stderr) and leaves it running in the background, its console output in
# HOSTDIR/systemd-console.log (override: SD_CONSOLE_LOG=path; systemd itself
# writes nothing there in a container: stop.sh saves the journal instead, to
# HOSTDIR/systemd-journal.log). Instance state: /run/guestlogd-systemd/<id>/.
# SD_OWNER_PID=pid: a watchdog stops the instance once that process is gone
# (e.g. the test process, in case it is killed before it can run stop.sh;
# a pid that is already gone stops the instance at once).
# Stop with tests/systemd/stop.sh PID1. On failure it cleans up and exits
# non-zero (2: the cached root is missing; see systemd.unavailable).
# SD_ROOT, SD_STATE, SD_NAME, SD_PIVOT: see common.sh.
# Opt-in, for two instances that talk to each other (e.g. libvirt migration);
# unset, the boot is exactly as without them:
#   SD_NET=1    also a private net namespace (unshare --net), with nothing in
#               it but a down lo: the caller moves links in (PID1's netns)
#   SD_FILES=DIR  a tree of files copied over the overlay's root before
#               systemd starts, since systemd reads units and their enable
#               links, and daemons their config, only when they start;
#               existing directories (and symlinks to them) keep their
#               owner and mode
#   SD_BIND="HOSTPATH:INSIDEPATH ..."  bind mounts made by ns-init.sh
#               before systemd starts (e.g. one log directory for two)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 HOSTDIR" >&2; exit 64; }
[ -d "$1" ] || { sd_log "$1: not a directory"; exit 64; }
HOSTDIR=$(realpath "$1")
[ "$(id -u)" = 0 ] || { sd_log "must run as root"; exit 2; }
if [ ! -f "$SD_STAMP" ]; then
    sd_log "no cached root at $SD_ROOT: run tests/env/$SD_SETUP.sh ($(cat "$SD_CACHE/$SD_SETUP.unavailable" 2>/dev/null || echo 'not provisioned'))"
    exit 2
fi
if [ -d /sys/fs/cgroup/unified ]; then CGBASE=/sys/fs/cgroup/unified
elif [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then CGBASE=/sys/fs/cgroup
else sd_log "no cgroup v2 hierarchy"; exit 2; fi
CONSOLE=${SD_CONSOLE_LOG:-$HOSTDIR/systemd-console.log}

t0=$(date +%s%N)
mkdir -p "$SD_STATE"
INST=$(mktemp -d "$SD_STATE/XXXXXXXX")
ID=${INST##*/}
trap 'rc=$?; if [ $rc -ne 0 ]; then sd_log "boot failed (see $CONSOLE)"; sd_cleanup "$INST" || true; fi' EXIT
echo "$HOSTDIR" >"$INST/hostdir"
mkdir "$INST/upper" "$INST/work" "$INST/root"
mount -t overlay -o "lowerdir=$SD_ROOT,upperdir=$INST/upper,workdir=$INST/work" \
    "$SD_NAME-$ID" "$INST/root"
CG=$CGBASE/$SD_NAME-$ID
echo "$CG" >"$INST/cgroup"
mkdir "$CG"
if [ -n "${SD_FILES:-}" ]; then
    [ -d "$SD_FILES" ] || { sd_log "SD_FILES=$SD_FILES: not a directory"; exit 64; }
    # tar, not cp -a: cp would give SRC's own mode (a 0700 temp dir) to /,
    # and replace /bin (a symlink) with a directory.
    tar -C "$SD_FILES" -cf - . |
        tar -C "$INST/root" -xf - --no-overwrite-dir --keep-directory-symlink
fi

# The subshell moves itself into its own cgroup (the root of systemd's cgroup
# namespace), records its pid, and becomes unshare, whose child becomes PID 1.
(
    echo "$BASHPID $(sd_proc_id "$BASHPID")" >"$INST/unshare"
    echo "$BASHPID" >"$CG/cgroup.procs"
    exec setsid unshare --fork --pid --mount --cgroup --uts --ipc ${SD_NET:+--net} --propagation private \
        bash "$HERE/ns-init.sh" "$INST/root" "$HOSTDIR"
) </dev/null >>"$CONSOLE" 2>&1 &

UPID=
for _ in $(seq 100); do [ -s "$INST/unshare" ] && break; sleep 0.05; done
read -r UPID _ <"$INST/unshare"
# Its starttime does not change across exec; re-record to be sure.
echo "$UPID $(sd_proc_id "$UPID")" >"$INST/unshare"
PID1=
for _ in $(seq 200); do
    PID1=$(cat "/proc/$UPID/task/$UPID/children" 2>/dev/null | awk '{print $1}')
    [ -n "$PID1" ] && break
    sd_alive "$INST/unshare" || { sd_log "unshare exited early"; exit 1; }
    sleep 0.05
done
[ -n "$PID1" ] || { sd_log "unshare started no child"; exit 1; }
echo "$PID1 $(sd_proc_id "$PID1")" >"$INST/pid1"

for _ in $(seq 300); do
    [ -S "/proc/$PID1/root/run/systemd/private" ] && break
    sd_alive "$INST/pid1" || { sd_log "systemd exited during boot"; tail -n 20 "$CONSOLE" >&2 || true; exit 1; }
    sleep 0.1
done
[ -S "/proc/$PID1/root/run/systemd/private" ] || { sd_log "no /run/systemd/private after 30 s"; exit 1; }
t1=$(date +%s%N)
STATE=$(timeout 60 nsenter -t "$PID1" -m -p -r -w /usr/bin/env -i PATH="$SD_PATH" \
    systemctl is-system-running --wait 2>/dev/null) || true
t2=$(date +%s%N)
case "$STATE" in
running) ;;
degraded)
    sd_log "degraded; failed units: $(nsenter -t "$PID1" -m -p -r -w /usr/bin/env -i PATH="$SD_PATH" \
        systemctl --failed --no-legend --plain --no-pager 2>&1 | awk '{print $1}' | tr '\n' ' ')" ;;
*) sd_log "is-system-running: '${STATE:-no answer}'"; exit 1 ;;
esac

if [ -n "${SD_OWNER_PID:-}" ]; then
    echo "$SD_OWNER_PID $(sd_proc_id "$SD_OWNER_PID")" >"$INST/owner"
    setsid bash -c '. "$1/common.sh"; while sd_alive "$2/owner"; do sleep 1; done
        exec bash "$1/stop.sh" "$3"' watchdog "$HERE" "$INST" "$PID1" \
        </dev/null >>"$CONSOLE" 2>&1 &
    echo "$! $(sd_proc_id $!)" >"$INST/watchdog"
fi

sd_log "systemd PID1 $PID1 $STATE (socket after $(( (t1 - t0) / 1000000 )) ms, $STATE after $(( (t2 - t0) / 1000000 )) ms; state $INST)"
echo "$PID1"
