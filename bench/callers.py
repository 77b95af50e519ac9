#!/usr/bin/env python3
"""Concurrent varlink callers against one or more guestlogd binaries.

    bench/callers.py --bin base=PATH --bin new=PATH [--seconds 5]

Standard library only. For each binary a daemon is started in its own
temporary directory (guestlogd --runtime-dir D/run --log-dir D/log --config
D/c.toml) and given 1,000 logs by pipelined AppendLog calls. Then, for
GetStatus and for ListLogs (of those 1,000 logs), N callers (1, 16, 256)
each on its own connection make calls back to back for --seconds: the table
shows calls/s over all of them, the p50, p99 and max latency of one call,
and the daemon's CPU use (utime+stime over the window, 100% = one core).
The callers are spread over min(N, nproc) processes, each an epoll loop on
raw AF_UNIX sockets, so the client side is the same for every binary.
Binaries take turns test by test (A B, B A, ...) so that a change in the
machine's load falls on both.

Connections are made before the clock starts, but each one's first call is
in the window: the baseline grows a connection's write buffer during its
first large reply, which makes that first ListLogs cost far more than the
next ones (see below), and a single loop serves those first calls one after
another. After each test the daemon must answer GetStatus again before the
next one starts; one still busy with abandoned calls after 15 s is replaced
by a new daemon with as many logs (printed as a note).

Last, ListLogs time against the number of logs (1k, 4k, 16k; more logs are
made by AppendLog, the daemons side by side): a binary that streams
ListLogs with "more" (more than one reply for 1,000 logs; it answers a whole
list past 1 MiB with LimitReached replySize) is called with "more" and read
until a reply lacks "continues": true; one that does not is called plainly.
Each point is a pair of calls, the first on a new connection ("fresh") and
the second on the same one ("reused"), the median of up to 5 pairs (fewer
when they take more than 10 s); a call past --list-timeout seconds prints
"timeout" and that daemon is not called again. Every list is parsed after
its timing to check that it holds every log.

The machine's load (/proc/loadavg, nproc) is printed before, after, and on
each row as the 1-minute average when the row started.
"""

import argparse
import json
import multiprocessing
import os
import select
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

IFACE = "io.guestlogd.Manager"
SOCK_NAME = IFACE
CALLERS = (1, 16, 256)
LIST_SIZES = (1000, 4000, 16000)
LOGS_FOR_CALLERS = 1000
SETTLE_TIMEOUT = 15

CONFIG_FULL = "[limits]\nmax-connections = 512\nmax-connections-per-uid = 512\n"
# The baseline refuses keys it does not know: it has only max-pipes,
# max-connections, max-message-size, max-consoles, max-clients and
# client-queue under [limits].
CONFIG_LEGACY = "[limits]\nmax-connections = 512\n"


def msg(method, parameters=None, more=False):
    m = {"method": f"{IFACE}.{method}"}
    if parameters is not None:
        m["parameters"] = parameters
    if more:
        m["more"] = True
    return json.dumps(m, separators=(",", ":")).encode() + b"\0"


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().strip()


def load1():
    return float(loadavg().split()[0])


def is_error(reply):
    """Whether a reply (without its NUL) is a varlink error. Errors are
    small; a large reply is a list and is not parsed here, to keep the
    client's cost out of the figures."""
    if len(reply) > 4096:
        return not reply.startswith(b'{"parameters"')
    try:
        return "error" in json.loads(reply)
    except ValueError:
        return True


class Daemon:
    def __init__(self, name, binary, parent):
        self.name = name
        self.binary = binary
        self.parent = parent
        self.proc = None
        self.logs = 0
        self.config = None
        self.streams = None  # ListLogs with "more"
        self.restarts = 0
        self.fresh_dir()

    def fresh_dir(self):
        self.dir = tempfile.mkdtemp(prefix=f"callers-{self.name}.", dir=self.parent)
        self.run = os.path.join(self.dir, "run")
        self.sock = os.path.join(self.run, SOCK_NAME)
        os.mkdir(self.run)
        os.mkdir(os.path.join(self.dir, "log"))

    def restart(self):
        """A new daemon with as many logs, in a new directory: for when the
        old one would take too long to finish the calls a test left."""
        self.stop(grace=2)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.fresh_dir()
        logs, self.logs = self.logs, 0
        self.start()
        self.add_logs(logs)
        self.restarts += 1

    def start(self):
        for config in (CONFIG_FULL, CONFIG_LEGACY):
            with open(os.path.join(self.dir, "c.toml"), "w") as f:
                f.write(config)
            err = open(os.path.join(self.dir, "daemon.log"), "wb")
            self.proc = subprocess.Popen(
                [self.binary, "--runtime-dir", self.run,
                 "--log-dir", os.path.join(self.dir, "log"),
                 "--config", os.path.join(self.dir, "c.toml")],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            err.close()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.connect(self.sock)
                    self.config = config
                    return
                except OSError:
                    time.sleep(0.02)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(f"{self.name}: no socket after 20 s")
            # It refused the config (or failed otherwise): try the next one.
        with open(os.path.join(self.dir, "daemon.log"), "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{self.name}: daemon exited:\n{tail}")

    def stop(self, grace=10):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    def connect(self, timeout=120):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.sock)
        return s

    def call(self, method, parameters=None, timeout=120):
        with self.connect(timeout) as s:
            s.sendall(msg(method, parameters))
            return json.loads(read_reply(s, bytearray()))

    def settle(self, timeout=SETTLE_TIMEOUT):
        """Waits until the daemon answers again: calls abandoned at the end
        of a test may still be running. Past timeout the daemon is replaced
        by a new one, and None returned."""
        t = time.monotonic()
        try:
            self.call("GetStatus", timeout=timeout)
        except socket.timeout:
            self.restart()
            return None
        time.sleep(0.3)
        return time.monotonic() - t

    def add_logs(self, upto, batch=500):
        """Pipelined AppendLog calls on one connection, in batches so that
        neither side's socket buffer fills while the other waits."""
        t = time.monotonic()
        n = self.logs
        with self.connect() as s:
            buf = bytearray()
            while n < upto:
                k = min(batch, upto - n)
                s.sendall(b"".join(
                    msg("AppendLog", {"name": f"bench{i:05d}", "message": "x"})
                    for i in range(n, n + k)))
                for _ in range(k):
                    r = read_reply(s, buf)
                    if is_error(r):
                        raise RuntimeError(f"{self.name}: AppendLog: {r[:300]!r}")
                n += k
        self.logs = n
        return time.monotonic() - t

    def probe_streams(self):
        """Whether ListLogs takes "more": the new daemon streams it, the
        baseline answers ListLogs with "more" by an error."""
        with self.connect() as s:
            s.sendall(msg("ListLogs", more=True))
            buf = bytearray()
            r = read_reply(s, buf)
            if is_error(r):
                self.streams = False
                return
            replies = 1
            while r.endswith(b'"continues":true}'):
                r = read_reply(s, buf)
                replies += 1
            # One reply for 1,000 logs: "more" taken as a plain call.
            self.streams = replies > 1


def read_reply(s, buf):
    """One message from a blocking socket; buf keeps what follows it."""
    start = 0
    while True:
        i = buf.find(b"\0", start)
        if i >= 0:
            r = bytes(buf[:i])
            del buf[:i + 1]
            return r
        start = len(buf)
        chunk = s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        buf += chunk


# --- N callers -------------------------------------------------------------

def caller_worker(path, nconns, payload, pipe):
    """Runs in a child process: nconns connections, one call in flight on
    each, until the deadline the parent sends."""
    try:
        socks = []
        for _ in range(nconns):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.setblocking(False)
            socks.append(s)
        ep = select.epoll()
        conns = {}
        for s in socks:
            ep.register(s.fileno(), select.EPOLLIN)
            conns[s.fileno()] = [s, bytearray(), 0]
        pipe.send("ready")
        deadline = pipe.recv()
        lat = []
        errors = 0
        closed = 0
        perf = time.perf_counter
        for c in conns.values():
            c[2] = perf()
            c[0].send(payload)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in ep.poll(min(left, 0.5)):
                c = conns[fd]
                s, buf = c[0], c[1]
                got = False
                while True:
                    try:
                        chunk = s.recv(1 << 20)
                    except BlockingIOError:
                        break
                    if not chunk:
                        ep.unregister(fd)
                        closed += 1
                        break
                    scan = len(buf)
                    buf += chunk
                    i = buf.find(b"\0", scan)
                    if i >= 0:
                        got = True
                        break
                if not got:
                    continue
                now = perf()
                if time.monotonic() > deadline:
                    break
                reply = bytes(buf[:i])
                del buf[:i + 1]
                lat.append(now - c[2])
                if is_error(reply):
                    errors += 1
                c[2] = perf()
                s.send(payload)
        for s in socks:
            s.close()
        pipe.send((lat, errors, closed))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        pipe.send(("failed", repr(e)))


def run_callers(d, method, n, seconds, procs):
    payload = msg(method)
    ctx = multiprocessing.get_context("fork")
    nw = max(1, min(n, procs))
    share = [n // nw + (1 if i < n % nw else 0) for i in range(nw)]
    workers = []
    for k in share:
        a, b = ctx.Pipe()
        p = ctx.Process(target=caller_worker, args=(d.sock, k, payload, b))
        p.start()
        workers.append((p, a))
    for p, a in workers:
        r = a.recv()
        if r != "ready":
            raise RuntimeError(f"{d.name}: caller failed: {r}")
    ticks = d.cpu_ticks()
    t0 = time.monotonic()
    deadline = t0 + seconds
    for _, a in workers:
        a.send(deadline)
    lat, errors, closed = [], 0, 0
    for p, a in workers:
        r = a.recv()
        if r[0] == "failed":
            raise RuntimeError(f"{d.name}: caller failed: {r[1]}")
        lat += r[0]
        errors += r[1]
        closed += r[2]
        p.join()
    wall = time.monotonic() - t0
    cpu = (d.cpu_ticks() - ticks) / os.sysconf("SC_CLK_TCK") / wall * 100
    settle = d.settle()
    lat.sort()
    q = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000) if lat else (lambda f: float("nan"))
    return {
        "rate": len(lat) / seconds, "calls": len(lat), "p50": q(0.50), "p99": q(0.99),
        "max": lat[-1] * 1000 if lat else float("nan"), "cpu": cpu,
        "errors": errors, "closed": closed, "settle": settle,
    }


# --- ListLogs against the number of logs ----------------------------------

def list_call(d, s, timeout):
    """One ListLogs on s, timed from the call's first byte to the last
    reply's NUL. Returns (seconds, [raw replies])."""
    t0 = time.perf_counter()
    s.settimeout(timeout)
    s.sendall(msg("ListLogs", more=d.streams))
    buf = bytearray()
    replies = [read_reply(s, buf)]
    while d.streams and replies[-1].endswith(b'"continues":true}'):
        s.settimeout(max(0.001, timeout - (time.perf_counter() - t0)))
        replies.append(read_reply(s, buf))
    return time.perf_counter() - t0, replies


def list_twice(d, timeout):
    """ListLogs on a new connection, then again on the same one: the
    baseline grows a connection's write buffer during its first large
    reply, so the two differ. (None, ...) on timeout."""
    try:
        with d.connect(timeout) as s:
            fresh, replies = list_call(d, s, timeout)
            check_list(d, replies)
            reused, replies = list_call(d, s, timeout)
            check_list(d, replies)
    except socket.timeout:
        return None, None, None
    return fresh, reused, replies


def check_list(d, replies):
    n = count_logs(replies)
    if n != d.logs:
        raise RuntimeError(f"{d.name}: ListLogs listed {n} of {d.logs} logs")


def count_logs(replies):
    n = 0
    for r in replies:
        v = json.loads(r)
        if "error" in v:
            raise RuntimeError(f"ListLogs: {r[:300]!r}")
        n += len(v["parameters"]["logs"])
    return n


def run_list(d, timeout, budget=10.0, reps=5):
    fresh, reused = [], []
    spent = 0.0
    while len(fresh) < reps and (not fresh or spent + fresh[-1] + reused[-1] < budget):
        a, b, replies = list_twice(d, timeout)
        if a is None:
            return {"timeout": True}
        fresh.append(a)
        reused.append(b)
        spent += a + b
    return {"timeout": False, "ms": statistics.median(fresh) * 1000,
            "reused": statistics.median(reused) * 1000, "n": len(fresh),
            "bytes": sum(len(r) + 1 for r in replies), "replies": len(replies)}


def add_logs_all(daemons, upto):
    """Brings every daemon to upto logs at once, one thread each."""
    out, errs = {}, []

    def one(d):
        try:
            if d.logs < upto:
                out[d.name] = d.add_logs(upto)
        except Exception as e:  # noqa: BLE001 - raised below
            errs.append(e)

    threads = [threading.Thread(target=one, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errs:
        raise errs[0]
    return [(d.name, out[d.name]) for d in daemons if d.name in out]


# --- output ----------------------------------------------------------------

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--label", action="append", default=[], metavar="NAME=TEXT")
    ap.add_argument("--seconds", type=float, default=5.0, help="per caller test (5)")
    ap.add_argument("--list-timeout", type=float, default=120.0)
    ap.add_argument("--callers", default=",".join(map(str, CALLERS)))
    ap.add_argument("--sizes", default=",".join(map(str, LIST_SIZES)))
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args()
    callers = [int(x) for x in args.callers.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    bins = [b.split("=", 1) for b in args.bin]
    labels = dict(x.split("=", 1) for x in args.label)
    procs = os.cpu_count() or 1
    started = time.monotonic()

    print(f"nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}"
          f"; callers run in up to {procs} processes; {args.seconds:g} s per caller test")
    print(f"loadavg at start: {loadavg()}")
    parent = tempfile.mkdtemp(prefix="guestlogd-callers.", dir=args.tmpdir)
    daemons = [Daemon(name, path, parent) for name, path in bins]
    try:
        for d in daemons:
            d.start()
            t = d.add_logs(LOGS_FOR_CALLERS)
            d.probe_streams()
            cfg = "full" if d.config == CONFIG_FULL else "without max-connections-per-uid"
            print(f"{d.name:>5}: {labels.get(d.name, '')} {d.binary}")
            print(f"       pid {d.proc.pid}; config {cfg}; ListLogs more: "
                  f"{'yes' if d.streams else 'no'}; {LOGS_FOR_CALLERS} AppendLog (new logs) "
                  f"pipelined in {t:.2f} s = {LOGS_FOR_CALLERS / t:.0f}/s")

        names = [d.name for d in daemons]
        ratio = len(daemons) == 2
        print()
        print("Concurrent callers: calls/s over all callers, latency of one call in ms, "
              "daemon CPU % of one core; load = 1-min loadavg when the row started;\n"
              "each connection is new when the clock starts, so its first call counts")
        head = f"{'method':<10}{'callers':>8}{'load':>6}"
        for nm in names:
            head += f" | {nm + ' calls/s':>14}{'p50':>8}{'p99':>8}{'max':>8}{'cpu%':>6}"
        if ratio:
            head += f" | {names[1] + '/' + names[0]:>9}"
        print(head)
        print("-" * len(head))
        results = {}
        turn = 0
        notes = []
        for method in ("GetStatus", "ListLogs"):
            for n in callers:
                row = f"{method:<10}{n:>8}{load1():>6.2f}"
                order = daemons if turn % 2 == 0 else daemons[::-1]
                turn += 1
                for d in order:
                    results[(d.name, method, n)] = run_callers(d, method, n, args.seconds, procs)
                for d in daemons:
                    r = results[(d.name, method, n)]
                    row += (f" | {r['rate']:>14.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}"
                            f"{r['max']:>8.1f}{r['cpu']:>6.0f}")
                    if r["errors"] or r["closed"]:
                        notes.append(f"{d.name} {method} x{n}: {r['errors']} error replies, "
                                     f"{r['closed']} connections closed by the daemon")
                    if r["settle"] is None:
                        notes.append(f"{d.name} {method} x{n}: no answer {SETTLE_TIMEOUT} s after "
                                     f"the test (abandoned calls still running): daemon restarted")
                    elif r["settle"] > 1:
                        notes.append(f"{d.name} {method} x{n}: {r['settle']:.1f} s to answer "
                                     f"again after the test (abandoned calls)")
                if ratio:
                    a = results[(names[0], method, n)]["rate"]
                    b = results[(names[1], method, n)]["rate"]
                    row += f" | {b / a:>8.2f}x" if a else f" | {'-':>9}"
                print(row, flush=True)
        for note in notes:
            print(f"  note: {note}")
        if 1 in callers and 16 in callers:
            print()
            for method in ("GetStatus", "ListLogs"):
                parts = []
                for d in daemons:
                    one = results[(d.name, method, 1)]["rate"]
                    sixteen = results[(d.name, method, 16)]["rate"]
                    parts.append(f"{d.name} {sixteen / one:.2f}x" if one else f"{d.name} -")
                print(f"16 callers vs 1, {method}: {', '.join(parts)}  "
                      f"(target >= 1.5x on {procs} cores)")

        print()
        print("ListLogs time against the number of logs, in ms: 'fresh' is the first call "
              "on a new connection, 'reused' a second call on it (median of up to 5 pairs); "
              "ms/1k = ms per 1,000 logs, flat = linear")
        head = f"{'logs':>6}{'load':>6}"
        for d in daemons:
            how = "more" if d.streams else "plain"
            head += (f" | {d.name + ' ' + how + ' fresh':>18}{'ms/1k':>8}{'reused':>8}{'ms/1k':>7}"
                     f"{'pairs':>6}{'KiB':>6}{'repl':>5}")
        if ratio:
            head += f" | {names[1] + '/' + names[0] + ' fresh':>15}{'reused':>8}"
        print(head)
        print("-" * len(head))
        lists = {}
        notes = []
        for size in sizes:
            row = f"{size:>6}{load1():>6.2f}"
            live = [d for d in daemons if not lists.get((d.name, "gone"))]
            made = add_logs_all(live, size)
            if made:
                notes.append(f"AppendLog up to {size} logs (daemons side by side): " +
                             ", ".join(f"{nm} {t:.1f} s" for nm, t in made))
            order = daemons if turn % 2 == 0 else daemons[::-1]
            turn += 1
            for d in order:
                if d not in live:
                    lists[(d.name, size)] = {"timeout": True, "skipped": True}
                    continue
                r = run_list(d, args.list_timeout)
                lists[(d.name, size)] = r
                if r["timeout"]:
                    lists[(d.name, "gone")] = True
                    notes.append(f"{d.name}: ListLogs of {size} logs took more than "
                                 f"{args.list_timeout:g} s; not called again")
                    d.stop(grace=2)
            for d in daemons:
                r = lists[(d.name, size)]
                if r["timeout"]:
                    what = "skipped" if r.get("skipped") else "timeout"
                    row += f" | {what:>18}{'-':>8}{'-':>8}{'-':>7}{'-':>6}{'-':>6}{'-':>5}"
                else:
                    row += (f" | {r['ms']:>18.1f}{r['ms'] / size * 1000:>8.2f}"
                            f"{r['reused']:>8.1f}{r['reused'] / size * 1000:>7.2f}{r['n']:>6}"
                            f"{r['bytes'] / 1024:>6.0f}{r['replies']:>5}")
            if ratio:
                a, b = lists[(names[0], size)], lists[(names[1], size)]
                if a["timeout"] or b["timeout"]:
                    row += f" | {'-':>15}{'-':>8}"
                else:
                    row += f" | {b['ms'] / a['ms']:>14.3f}x{b['reused'] / a['reused']:>7.2f}x"
            print(row, flush=True)
        for note in notes:
            print(f"  note: {note}")
        if len(sizes) >= 2:
            lo, hi = sizes[0], sizes[-1]
            parts = []
            for d in daemons:
                a, b = lists[(d.name, lo)], lists[(d.name, hi)]
                if a["timeout"] or b["timeout"]:
                    parts.append(f"{d.name} -")
                else:
                    parts.append(f"{d.name} fresh {(b['ms'] / hi) / (a['ms'] / lo):.2f}"
                                 f" reused {(b['reused'] / hi) / (a['reused'] / lo):.2f}")
            print(f"ms/1k at {hi} / ms/1k at {lo}: {'; '.join(parts)}  (1.00 = linear)")
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(parent, ignore_errors=True)
    print()
    print(f"loadavg at end: {loadavg()}; took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
