#!/usr/bin/env bash
# End-to-end check of boot.sh / ctl.sh / run.sh / stop.sh and of systemd 257's
# FD store, with fdstore-demo.py as a socket-activated Type=notify service:
#   (a) connecting from the host to /proc/PID1/root/run/demo/demo.sock activates it;
#   (b) after `systemctl restart`, after kill -9 (Restart=on-failure) and after
#       stop + start (FileDescriptorStorePreserve=yes), the new instance gets
#       LISTEN_FDNAMES with varlink and pipe1, and what the host wrote into the
#       stored FIFO (whose path is removed: reachable only through the store)
#       meanwhile is read by the new instance: nothing lost;
#   (c) ExecReload=/bin/kill -USR1 $MAINPID reaches the service.
# Usage: tests/systemd/fdstore-demo.sh   (root; KEEP=1 keeps the work dir)
# Prints "N passed, M failed"; exit 0 only if all passed; exit 0 with
# "SKIPPED: ..." if the systemd root is not provisioned.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=/var/cache/guestlogd-test
if [ ! -f "$W/trixie/.guestlogd-complete" ]; then
    echo "SKIPPED: systemd unavailable: $(cat "$W/systemd.unavailable" 2>/dev/null || echo 'run tests/env/systemd.sh')"
    exit 0
fi

DIR=$(mktemp -d /tmp/guestlogd-sd-demo.XXXXXX)
PID1=
cleanup() {
    exec 3>&- 2>/dev/null || true
    "$HERE/stop.sh" "$PID1" || true
    if [ -n "${KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

pass=0 fail=0
check() { # check DESCRIPTION COMMAND...
    local d=$1; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   $d"; else fail=$((fail + 1)); echo "FAIL $d"; fi
}
ctl() { "$HERE/ctl.sh" "$PID1" "$@"; }
starts() { grep -c '^start ' "$DIR/demo.log" 2>/dev/null || true; }
wait_starts() { # wait_starts N: until the Nth start is logged (10 s)
    for _ in $(seq 100); do [ "$(starts)" -ge "$1" ] && return 0; sleep 0.1; done
    return 1
}
last_start() { grep '^start ' "$DIR/demo.log" | tail -n 1; }
field() { last_start | tr ' ' '\n' | sed -n "s/^$1=//p"; }
has_name() { field fdnames | tr ':' '\n' | grep -qx "$1"; }
prop() { ctl show -p "$1" --value demo.service; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

cp "$HERE/fdstore-demo.py" "$DIR/"
mkfifo "$DIR/demo.fifo"
t=$(date +%s%N)
PID1=$("$HERE/boot.sh" "$DIR")
echo "boot: $(ms "$t") ms, PID1 $PID1, $(ctl is-system-running || true)"
R=/proc/$PID1/root

cat >"$R/etc/systemd/system/demo.socket" <<'UNIT'
[Socket]
ListenStream=/run/demo/demo.sock
FileDescriptorName=varlink
UNIT
cat >"$R/etc/systemd/system/demo.service" <<'UNIT'
[Unit]
StartLimitIntervalSec=0
[Service]
Type=notify
ExecStart=/usr/bin/python3 /host/fdstore-demo.py
ExecReload=/bin/kill -USR1 $MAINPID
FileDescriptorStoreMax=16
FileDescriptorStorePreserve=yes
Restart=on-failure
RestartSec=100ms
Environment=DEMO_LOG=/host/demo.log DEMO_FIFO=/host/demo.fifo
UNIT
ctl daemon-reload
ctl start demo.socket
check "service inactive before any connection" [ "$(prop ActiveState)" = inactive ]

# (a) socket activation from the host
reply=$(python3 - "$R/run/demo/demo.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
print(s.makefile().readline().strip())
PY
)
echo "reply: $reply"
check "connection activated the service (1 start)" wait_starts 1
check "reply comes from the activated instance" [ "$reply" = "pid=$(field pid) fdnames=$(field fdnames)" ]
check "service active" [ "$(prop ActiveState)" = active ]
check "first instance opened the FIFO and stored it" grep -q '^stored .*names=pipe1' "$DIR/demo.log"
echo "store after first start: NFileDescriptorStore=$(prop NFileDescriptorStore)"

# The host keeps the write end; removing the path leaves the store as the only
# way for a new instance to reach the pipe.
exec 3>"$DIR/demo.fifo"
rm "$DIR/demo.fifo"

round() { # round N DATA DESCRIPTION: check the Nth start
    check "$3: new instance started" wait_starts "$1"
    echo "     $(last_start)"
    check "$3: LISTEN_FDNAMES has varlink" has_name varlink
    check "$3: LISTEN_FDNAMES has pipe1" has_name pipe1
    check "$3: pipe data '$2' read by the new instance" [ "$(field drained)" = "$2" ]
}

# (b1) systemctl restart
echo m1 >&3
t=$(date +%s%N); ctl restart demo.service; echo "restart: $(ms "$t") ms"
round 2 m1 restart

# (b2) kill -9 -> Restart=on-failure
echo m2 >&3
main=$(prop MainPID)
"$HERE/run.sh" "$PID1" kill -9 "$main"
round 3 m2 "kill -9"
check "kill -9: NRestarts=1" [ "$(prop NRestarts)" = 1 ]

# (b3) stop, write while stopped, start
ctl stop demo.service
n=$(prop NFileDescriptorStore)
echo "after stop: ActiveState=$(prop ActiveState) NFileDescriptorStore=$n"
check "stop: FD store kept (FileDescriptorStorePreserve=yes)" [ "$n" -ge 1 ]
echo m3 >&3
ctl start demo.service
round 4 m3 "stop+start"

# (c) reload
main=$(prop MainPID)
ctl reload demo.service
check "reload: SIGUSR1 reached MainPID" bash -c "for _ in \$(seq 50); do grep -q '^usr1 pid=$main\$' '$DIR/demo.log' && exit 0; sleep 0.1; done; exit 1"

# Final connection reaches the current instance; nothing opened the FIFO twice.
reply=$(python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); print(s.makefile().readline().strip())' "$R/run/demo/demo.sock")
check "final connection served by MainPID" [ "${reply%% *}" = "pid=$main" ]
check "FIFO opened only once" [ "$(grep -c '^opened-fifo' "$DIR/demo.log")" = 1 ]
check "every message read exactly once, in order" \
    [ "$(grep '^start ' "$DIR/demo.log" | tr ' ' '\n' | sed -n 's/^drained=//p' | grep . | tr '\n' ' ')" = "m1 m2 m3 " ]

# Contrast: FileDescriptorStorePreserve=no empties the store on stop.
mkdir -p "$R/etc/systemd/system/demo.service.d"
printf '[Service]\nFileDescriptorStorePreserve=no\n' >"$R/etc/systemd/system/demo.service.d/no.conf"
ctl daemon-reload
ctl stop demo.service
n=$(prop NFileDescriptorStore)
echo "Preserve=no, after stop: NFileDescriptorStore=$n"
check "Preserve=no: store emptied on stop" [ "$n" = 0 ]

echo "--- demo.log"; cat "$DIR/demo.log"
t=$(date +%s%N); "$HERE/stop.sh" "$PID1"; echo "stop: $(ms "$t") ms"; PID1=
check "no mounts left" bash -c '! grep -q guestlogd-systemd /proc/mounts'
check "no cgroup left" bash -c '! ls -d /sys/fs/cgroup/unified/guestlogd-systemd-* 2>/dev/null'
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
