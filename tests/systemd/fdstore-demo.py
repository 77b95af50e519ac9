#!/usr/bin/python3
"""Tiny Type=notify service for tests/systemd/fdstore-demo.sh (runs inside the
trixie root with python3-minimal). Appends one line per event to $DEMO_LOG:
  start pid=P n=N fdnames=a:b drained=x,y probe=name=data,...   (on each start)
  opened-fifo pid=P | stored pid=P names=... | usr1 pid=P | term pid=P
On a start without a stored "pipe1" it opens the FIFO $DEMO_FIFO O_RDWR and
pushes that fd to the FD store (FDSTORE=1, FDNAME=pipe1, FDPOLL=0); later
instances get it back in LISTEN_FDS. Each start drains (and logs) whatever was
written into pipe1 meanwhile; the running instance never reads it. Probe (first
start only): two anonymous pipes with one byte and the write end closed, pushed
as anon-poll (default polling) and anon-nopoll (FDPOLL=0), to see which one
systemd keeps. Each connection to the activated socket "varlink" gets one line:
"pid=P fdnames=..."."""
import array, os, select, signal, socket, sys

LOG = os.environ.get("DEMO_LOG", "/host/demo.log")
FIFO = os.environ.get("DEMO_FIFO", "/host/demo.fifo")


def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")


def notify(msg, fds=()):
    path = os.environ["NOTIFY_SOCKET"]
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([msg.encode()], anc, 0, path)
    finally:
        s.close()


def listen_fds():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    n = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":") if n else []
    fds = {}
    for i in range(n):
        fd = 3 + i
        os.set_inheritable(fd, False)
        fds.setdefault(names[i] if i < len(names) else "unknown", []).append(fd)
    return fds


def drain(fd):
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not b:
            break
        out += b
    return out


def main():
    pid = os.getpid()
    fdnames = os.environ.get("LISTEN_FDNAMES", "")
    fds = listen_fds()
    signal.signal(signal.SIGUSR1, lambda *_: log(f"usr1 pid={pid}"))
    signal.signal(signal.SIGTERM, lambda *_: (log(f"term pid={pid}"), sys.exit(0)))

    probe = []
    for name in ("anon-poll", "anon-nopoll"):
        for fd in fds.get(name, []):
            probe.append(f"{name}={drain(fd).decode()!s}")
    if "pipe1" in fds:
        pipe = fds["pipe1"][0]
        drained = drain(pipe).decode().split()
    else:
        pipe = os.open(FIFO, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        log(f"opened-fifo pid={pid}")
        drained = drain(pipe).decode().split()
        notify("FDSTORE=1\nFDNAME=pipe1\nFDPOLL=0", [pipe])
        stored = ["pipe1"]
        if not any(k.startswith("anon-") for k in fds):
            for name, extra in (("anon-poll", ""), ("anon-nopoll", "\nFDPOLL=0")):
                r, w = os.pipe()
                os.write(w, name.encode())
                os.close(w)
                notify(f"FDSTORE=1\nFDNAME={name}{extra}", [r])
                os.close(r)
                stored.append(name)
        log(f"stored pid={pid} names={','.join(stored)}")
    # pipe1 stays open (unread) in this instance; systemd holds its own copy.
    log(f"start pid={pid} n={os.environ.get('LISTEN_FDS', '0')} fdnames={fdnames} "
        f"drained={','.join(drained)} probe={','.join(probe)}")
    notify(f"READY=1\nSTATUS=pid {pid} fdnames {fdnames}")

    listeners = [socket.socket(fileno=fd) for fd in fds.get("varlink", [])]
    while True:
        try:
            ready, _, _ = select.select(listeners, [], [], 3600)
        except InterruptedError:
            continue
        for lsock in ready:
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(f"pid={pid} fdnames={fdnames}\n".encode())

if __name__ == "__main__":
    main()
