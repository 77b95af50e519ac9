#!/usr/bin/python3
"""A do-nothing stand-in for virtlogd, to check how a replacement is started:
logs what systemd handed it (LISTEN_FDS, LISTEN_FDNAMES, its cgroup), sends
READY=1, then accepts on the FD named virtlogd.socket, logs the peer and the
first call's header (if any), and closes the connection without an answer.
Log: $STANDIN_LOG (default /host/standin.log)."""
import os
import socket
import struct

log = open(os.environ.get("STANDIN_LOG", "/host/standin.log"), "a", buffering=1)
n = int(os.environ.get("LISTEN_FDS", "0"))
names = os.environ.get("LISTEN_FDNAMES", "").split(":")
mine = os.environ.get("LISTEN_PID") == str(os.getpid())
cgroup = [l[3:] for l in open("/proc/self/cgroup").read().split() if l.startswith("0::")]
log.write(f"start pid={os.getpid()} listen_pid_ok={mine} listen_fds={n} "
          f"fdnames={':'.join(names)} cgroup={':'.join(cgroup)}\n")
socks = {names[i]: socket.socket(fileno=3 + i) for i in range(n)}
for name, s in socks.items():
    log.write(f"fd name={name} addr={s.getsockname()}\n")

addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n_sock:
    n_sock.sendto(b"READY=1", addr)
log.write("sent READY=1\n")

main = socks["virtlogd.socket"]
while True:
    conn, _ = main.accept()
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    conn.settimeout(5)
    try:
        head = conn.recv(28, socket.MSG_WAITALL)
    except socket.timeout:
        head = b""
    if len(head) == 28:
        ln, prog, vers, proc, typ, serial, status = struct.unpack(">7I", head)
        what = f"call len={ln} prog={prog:#x} vers={vers} proc={proc} type={typ} serial={serial}"
    else:
        what = f"no call ({len(head)} bytes)"
    log.write(f"conn peer pid={pid} uid={uid}: {what}; closing unanswered\n")
    conn.close()
