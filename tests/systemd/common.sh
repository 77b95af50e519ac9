# Sourced by tests/systemd/*.sh. Instance state lives in $SD_STATE/<id>/:
#   root/  overlay (lowerdir = cached trixie root, never modified)
#   upper/ work/  overlay upper and work dirs
#   hostdir  cgroup  unshare  pid1  owner  watchdog  ("PID STARTTIME" for pids)
# Another harness (tests/libvirt/) reuses these scripts on another root by
# exporting, before calling them:
#   SD_ROOT   the cached root to overlay            (default: $SD_CACHE/trixie)
#   SD_SETUP  tests/env/<SD_SETUP>.sh provisions it (default: systemd)
#   SD_STATE  where its instances' state lives      (default: /run/guestlogd-systemd)
#   SD_NAME   overlay and cgroup name prefix        (default: guestlogd-systemd)
#   SD_PIVOT  non-empty: ns-init.sh enters the root with pivot_root, not chroot
SD_CACHE=/var/cache/guestlogd-test
SD_ROOT=${SD_ROOT:-$SD_CACHE/trixie}
SD_SETUP=${SD_SETUP:-systemd}
SD_STAMP=$SD_ROOT/.guestlogd-complete
SD_STATE=${SD_STATE:-/run/guestlogd-systemd}
SD_NAME=${SD_NAME:-guestlogd-systemd}
SD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

sd_log() { echo "${0##*/}: $*" >&2; }

# "PID STARTTIME" of a live (non-zombie) process, or nothing.
sd_proc_id() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }            # fields from 3 (state) on
    set -- $rest
    [ "$1" = Z ] || [ "$1" = X ] && return 0
    shift 19                     # field 22 = starttime
    echo "$1"
}

# True if the process recorded as "PID STARTTIME" in FILE is still that process.
sd_alive() {
    local pid st
    [ -s "$1" ] || return 1
    # 2>/dev/null first: another stop.sh may remove the file meanwhile
    # (stop.sh looks at every instance), and that is just "not alive".
    read -r pid st 2>/dev/null <"$1" || return 1
    [ -n "$pid" ] && [ -n "$st" ] && [ "$(sd_proc_id "$pid")" = "$st" ]
}

sd_pid() { local pid st; read -r pid st 2>/dev/null <"$1" && echo "$pid"; }

# Wait up to $2 tenths of a second for the process in FILE $1 to be gone.
sd_wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do sd_alive "$1" || return 0; sleep 0.1; done
    ! sd_alive "$1"
}

# Stop an instance and remove everything it left: processes, cgroups, mounts,
# state. Safe to call at any stage of boot and more than once. Saves the
# journal to HOSTDIR/systemd-journal.log first (unless SD_NO_JOURNAL=1).
sd_cleanup() {
    local inst=$1 pid cg hostdir
    [ -d "$inst" ] || return 0
    if sd_alive "$inst/watchdog"; then
        pid=$(sd_pid "$inst/watchdog")
        [ "$pid" != "$$" ] && [ "$pid" != "$PPID" ] && kill "$pid" 2>/dev/null || true
    fi
    if sd_alive "$inst/pid1"; then
        pid=$(sd_pid "$inst/pid1")
        # Keep the journal (it lives in the overlay, which goes away) for post-mortems.
        hostdir=$(cat "$inst/hostdir" 2>/dev/null || true)
        if [ -n "$hostdir" ] && [ -z "${SD_NO_JOURNAL:-}" ]; then
            timeout 10 nsenter -t "$pid" -m -p -r -w /usr/bin/env -i PATH="$SD_PATH" \
                journalctl -b --no-pager -o short-precise >"$hostdir/systemd-journal.log" 2>&1 || true
        fi
        kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true     # poweroff (container: exit)
        if ! sd_wait_gone "$inst/pid1" 100; then
            sd_log "PID1 $pid did not exit within 10 s of SIGRTMIN+4: SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
            sd_wait_gone "$inst/pid1" 50 || true
        fi
    fi
    if sd_alive "$inst/unshare"; then
        pid=$(sd_pid "$inst/unshare")
        sd_wait_gone "$inst/unshare" 20 || kill -9 "$pid" 2>/dev/null || true
        sd_wait_gone "$inst/unshare" 50 || true
    fi
    cg=$(cat "$inst/cgroup" 2>/dev/null || true)
    if [ -n "$cg" ] && [ -d "$cg" ]; then
        [ -e "$cg/cgroup.kill" ] && echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
            sleep 0.1
        done
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ -d "$cg" ] && sd_log "could not remove cgroup $cg"
    fi
    if mountpoint -q "$inst/root" 2>/dev/null; then
        umount "$inst/root" 2>/dev/null || umount -l "$inst/root" || true
    fi
    if mountpoint -q "$inst/root" 2>/dev/null; then
        sd_log "overlay $inst/root still mounted; leaving $inst"
        return 1
    fi
    rm -rf --one-file-system "$inst"
}
