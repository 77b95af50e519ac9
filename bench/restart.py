#!/var/cache/guestlogd-test/venv/bin/python
"""What a restart costs: the stall a console client sees across a SIGUSR1
re-exec, and the time until the new daemon serves with 1,000 adopted
consoles.

    /var/cache/guestlogd-test/venv/bin/python bench/restart.py [CONSOLES] [REEXECS]

One console has a fake guest writing a numbered 100-byte line every 1 ms
and a client timing each arrival; the other consoles (default 999) each
have a connected fake guest and client, idle. Each of REEXECS (default 10)
SIGUSR1s re-executes the daemon, which hands every socket and connection
over. Printed: the client's largest gap around each re-exec (p50, max),
against the gap seen with no re-exec in the same run; and the time from
SIGUSR1 until GetStatus answers with one more adoption (p50, max). Every
line is checked to arrive once and in order.
"""

import os
import signal
import socket
import sys
import threading
import time

from console_common import Daemon, Varlink, connect, percentile, raise_nofile


def main():
    consoles = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    reexecs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    raise_nofile(4 * consoles + 1000)
    config = f"[limits]\nmax-consoles = {consoles + 10}\n"
    with Daemon(config, prefix="guestlogd-restart.") as d:
        v = Varlink(d.sock)
        peers = []
        for i in range(consoles):
            r = v.call("CreateConsole", {"name": f"vm{i}", "replayBytes": 0})
            peers.append((connect(r["guestSocket"]), connect(r["clientSocket"])))
        guest, client = peers[0]

        arrivals = []  # (time, line number)
        stop = False

        def read():
            buf = b""
            while not stop:
                data = client.recv(65536)
                if not data:
                    return
                now = time.monotonic()
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    arrivals.append((now, int(line.split()[1])))

        def write():
            n = 0
            while not stop:
                guest.sendall(b"line %08d %s\n" % (n, b"x" * 85))
                n += 1
                time.sleep(0.001)

        threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=write)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        quiet_from = len(arrivals)
        time.sleep(1.0)
        quiet = gaps(arrivals[quiet_from:])

        ready, stalls = [], []
        for _ in range(reexecs):
            before = Varlink(d.sock).call("GetStatus")["adoptions"]
            mark = len(arrivals)
            t0 = time.monotonic()
            os.kill(d.pid, signal.SIGUSR1)
            while True:
                try:
                    if Varlink(d.sock).call("GetStatus")["adoptions"] > before:
                        break
                except (OSError, Exception):
                    pass
                time.sleep(0.001)
            ready.append(time.monotonic() - t0)
            time.sleep(0.5)
            stalls.append(max(gaps(arrivals[max(mark - 1, 0):])))
        stop = True
        threads[1].join()

        numbers = [n for _, n in arrivals]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "lost or repeated lines"
        status = Varlink(d.sock).call("GetStatus")
        rss = int(open(f"/proc/{d.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
        ready.sort()
        stalls.sort()
        print(f"re-exec with {consoles} consoles: READY p50 {percentile(ready, 50) * 1e3:.1f} ms, "
              f"max {ready[-1] * 1e3:.1f} ms; client stall p50 {percentile(stalls, 50) * 1e3:.1f} ms, "
              f"max {stalls[-1] * 1e3:.1f} ms (no re-exec: max gap {max(quiet) * 1e3:.1f} ms); "
              f"{len(numbers)} lines in order, none lost; adoptions {status['adoptions']}, "
              f"stored fds {status['storedFds']}, RSS {rss:.1f} MB")
        for g, c in peers:
            g.close()
            c.close()


def gaps(arrivals):
    times = [t for t, _ in arrivals]
    return [b - a for a, b in zip(times, times[1:])] or [0.0]


if __name__ == "__main__":
    main()
