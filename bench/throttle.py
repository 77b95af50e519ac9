#!/var/cache/guestlogd-test/venv/bin/python
"""The daemon's CPU under a flood, with and without a rate limit, side by side.

    /var/cache/guestlogd-test/venv/bin/python bench/throttle.py [SECONDS] [RATE]

For SECONDS (default 10) a fake guest writes to a console, and a writer to
an OpenPipe pipe, as fast as they can (and the pipe's writer once more at
twenty times RATE), once into a log with no limit and once into a log with
maxRate RATE bytes a second (default 1 MiB). The
daemon's CPU (utime + stime from /proc) over each flood is printed as a
share of one core, with what reached the log. A throttled console's guest
is simply not read (it blocks, as on a slow serial line); a throttled pipe
is still read, and what is over the rate dropped, so its cost is the
reading. Standard library only.
"""

import array
import os
import socket
import sys
import threading
import time

from console_common import Daemon, Varlink, on_signal_exit

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
CHUNK = os.urandom(64 * 1024)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def open_pipe(sock_path, name: str, params: dict) -> int:
    """OpenPipe over a raw socket, taking the reply's FD (SCM_RIGHTS)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock_path))
    msg = {"method": "io.guestlogd.Manager.OpenPipe", "parameters": {"name": name, **params}}
    import json
    s.sendall(json.dumps(msg).encode() + b"\0")
    fds = array.array("i")
    data, anc, _, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if b'"error"' in data or not fds:
        sys.exit(f"OpenPipe failed: {data!r}")
    s.close()
    return fds[0]


def flood(write, seconds: float, pace: float | None = None):
    """Writes as fast as `write` takes for `seconds` (or at `pace` bytes a
    second), on a thread."""
    start = time.monotonic()
    stop = start + seconds
    sent = [0]

    def run():
        while time.monotonic() < stop:
            if pace is not None:
                ahead = sent[0] / pace - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            try:
                n = write(CHUNK)
                sent[0] += len(CHUNK) if n is None else n
            except (BlockingIOError, InterruptedError):
                time.sleep(0.001)
            except OSError:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, sent


def measure(d: Daemon, v: Varlink, kind: str, limited: bool, pace: float | None):
    name = f"{kind}-{'limited' if limited else 'free'}-{'paced' if pace else 'max'}"
    rate = {"maxRate": RATE, "maxBurst": RATE} if limited else {}
    params = {"maxSize": 64 << 20, "maxBackups": 1, **rate}
    if kind == "console":
        created = v.call("CreateConsole", {"name": name, "replayBytes": 0, **params})
        g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        g.connect(created["guestSocket"])
        write = g.sendall
    else:
        fd = open_pipe(d.sock, name, params)
        write = lambda b: os.write(fd, b)  # noqa: E731
    time.sleep(0.3)
    before = cpu_seconds(d.pid)
    t0 = time.monotonic()
    t, sent = flood(write, SECONDS, pace)
    t.join()
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(d.pid) - before
    time.sleep(0.5)
    logged = v.log(name)["bytesWritten"]
    return cpu / elapsed, logged, sent[0]


def main():
    on_signal_exit()
    print(f"{SECONDS:.0f} s floods of 64 KiB writes; limited logs at {RATE} bytes/s")
    print(f"{'writer':<9} {'limit':<10} {'daemon CPU':>11} {'sent MB/s':>10} {'logged MB/s':>12} {'CPU-s/GB sent':>14}")
    with Daemon("") as d:
        v = Varlink(d.sock)
        runs = [("console", None), ("pipe", None), ("pipe", 20.0 * RATE)]
        for kind, pace in runs:
            for limited in (False, True):
                share, logged, sent = measure(d, v, kind, limited, pace)
                label = f"{RATE} B/s" if limited else "none"
                if pace:
                    kind = "pipe@20x"
                per_gb = share * SECONDS / (sent / 1e9) if sent else 0
                print(
                    f"{kind:<9} {label:<10} {share * 100:>10.1f}% {sent / SECONDS / 1e6:>10.1f}"
                    f" {logged / SECONDS / 1e6:>12.2f} {per_gb:>14.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
