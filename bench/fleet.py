#!/usr/bin/env python3
"""The cost of the fleet features, on the release binary:

1. The daemon's CPU per GB written through OpenPipe, with and without
   journal export: the same printable 80-byte lines into two logs, one
   with journal: true and no budget (every line is an entry: the worst
   case), its entries taken by `socat` on a datagram socket standing in
   for journald's. CPU is the daemon's utime + stime (/proc/PID/stat)
   from the pipe's first byte until ListLogs shows every byte written
   and, with the export, every line sent.
2. io.systemd.Metrics List at 4,000 logs: wall time of one List (all
   replies read), best and median of 5, on a fresh connection each.

    bench/fleet.py [MIB]    (default 512 MiB per run)
Env: GUESTLOGD (default target/release/guestlogd).
"""
import json, os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTLOGD = os.environ.get("GUESTLOGD", f"{ROOT}/target/release/guestlogd")
MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 512
TICK = os.sysconf("SC_CLK_TCK")


def call(sock, method, params=None, more=False):
    msg = {"method": method, "parameters": params or {}}
    if more:
        msg["more"] = True
    sock.sendall(json.dumps(msg).encode() + b"\0")


def replies(sock):
    buf = b""
    while True:
        while b"\0" not in buf:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            buf += chunk
        msg, buf = buf.split(b"\0", 1)
        r = json.loads(msg)
        yield r
        if not r.get("continues"):
            return


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def open_pipe(path, params):
    s = connect(path)
    call(s, "io.guestlogd.Manager.OpenPipe", params)
    msg, fds, _, _ = socket.recv_fds(s, 1 << 16, 1)
    s.close()
    return fds[0]


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def listlogs(path):
    s = connect(path)
    call(s, "io.guestlogd.Manager.ListLogs", more=True)
    logs = {}
    for r in replies(s):
        for l in r.get("parameters", {}).get("logs", []):
            logs[l["name"]] = l
    s.close()
    return logs


def main():
    d = tempfile.mkdtemp(prefix="gld-fleet-bench.")
    jsock = f"{d}/journal.sock"
    sink = subprocess.Popen(["socat", "-u", f"UNIX-RECV:{jsock}", "/dev/null"])
    while not os.path.exists(jsock):
        time.sleep(0.01)
    conf = f"{d}/g.toml"
    open(conf, "w").write(
        f'[journal]\nsocket = "{jsock}"\nmax-lines-per-second = 0\n'
        f'[metrics]\nsocket = "{d}/metrics"\n[limits]\nmax-logs = 8192\n'
    )
    daemon = subprocess.Popen([GUESTLOGD, "--runtime-dir", f"{d}/run", "--log-dir", f"{d}/log",
                               "--config", conf], stderr=subprocess.DEVNULL)
    path = f"{d}/run/io.guestlogd.Manager"
    while not os.path.exists(path) or not os.path.exists(f"{d}/metrics"):
        time.sleep(0.01)
    line = (b"x" * 75 + b"\n")
    block = b"".join(b"%04d" % (i % 10000) + line for i in range(8192))  # 80-byte lines
    total = MIB * 1024 * 1024 // len(block) * len(block)
    lines = total // 80
    try:
        for name, journal in [("plain", False), ("exported", True)]:
            fd = open_pipe(path, {"name": name, "journal": journal, "maxSize": 64 << 20, "maxBackups": 2})
            c0, t0 = cpu(daemon.pid), time.time()
            left = total
            while left:
                n = os.write(fd, block[: min(len(block), left)])
                left -= n
            os.close(fd)
            while True:
                l = listlogs(path).get(name, {})
                j = l.get("journal") or {}
                if l.get("bytesWritten") == total and (not journal or j.get("linesSent") == lines):
                    break
                time.sleep(0.05)
            c1, t1 = cpu(daemon.pid), time.time()
            gb = total / 1e9
            print(f"{name}: {total >> 20} MiB ({lines} lines) in {t1 - t0:.2f} s, "
                  f"daemon CPU {c1 - c0:.2f} s = {(c1 - c0) / gb:.2f} CPU-s per GB")
        s = connect(path)
        for i in range(4000 - 2):
            call(s, "io.guestlogd.Manager.AppendLog", {"name": f"instance-{i:08x}", "message": "x"})
            next(replies(s))
        s.close()
        times = []
        for _ in range(5):
            m = connect(f"{d}/metrics")
            t0 = time.time()
            call(m, "io.systemd.Metrics.List", more=True)
            n = sum(1 for _ in replies(m))
            times.append(time.time() - t0)
            m.close()
        times.sort()
        print(f"List at {len(listlogs(path))} logs: {n} metrics, best {times[0] * 1000:.0f} ms, "
              f"median {times[2] * 1000:.0f} ms")
    finally:
        daemon.terminate()
        daemon.wait()
        sink.terminate()
        subprocess.run(["rm", "-rf", d])


main()
