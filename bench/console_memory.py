#!/var/cache/guestlogd-test/venv/bin/python
"""The daemon's resident memory with many idle consoles.

    /var/cache/guestlogd-test/venv/bin/python bench/console_memory.py [CONSOLES]

Starts the release daemon in a temporary directory and reads its VmRSS.
Then creates CONSOLES (default 1000) consoles (each with a log, default
replay of 16 KiB) over one varlink connection, connects a fake guest to each
and has it write 4 KiB, attaches one client to each (its replay is those
4 KiB), has every guest write 4 KiB more and every client read its 8 KiB,
so logs, replay and client queues have all been used. With everything idle
and connected it reads VmRSS again. The baseline is the same daemon's RSS
before any console, measured in the same run. Target: at most 64 MB in all.
RLIMIT_NOFILE is raised for this process and the daemon (2 sockets per
console here; 2 listeners, 2 connections and a log file per console there).
"""

import os
import sys
import time

from console_common import (
    Daemon, Varlink, connect, on_signal_exit, raise_nofile, rss_detail, rss_mb,
)

TARGET_MB = 64.0
CHUNK = 4096


def wait_for(v: Varlink, what: str, test, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        consoles = v.call("ListLogs")["consoles"]
        bad = [c for c in consoles if not test(c)]
        if not bad:
            return
        if time.monotonic() > deadline:
            sys.exit(f"{len(bad)} consoles not {what}, e.g. {bad[0]}")
        time.sleep(0.05)


def read_exactly(sock, n: int) -> bytes:
    data = bytearray()
    sock.settimeout(10)
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def main() -> int:
    on_signal_exit()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    raise_nofile(n * 5 + 512)
    config = f"[limits]\nmax-consoles = {n + 100}\nmax-clients = 16\n"
    out1, out2 = os.urandom(CHUNK), os.urandom(CHUNK)
    guests, clients = [], []
    with Daemon(config, "guestlogd-cmem.") as d:
        v = Varlink(d.sock)
        try:
            before = rss_mb(d.pid)
            print(f"before: RSS {before:.1f} MB ({rss_detail(d.pid)})", flush=True)
            t0 = time.monotonic()
            infos = [v.call("CreateConsole", {"name": f"vm{i}"}) for i in range(n)]
            created = time.monotonic() - t0
            for info in infos:
                g = connect(info["guestSocket"])
                guests.append(g)
                g.sendall(out1)
            wait_for(v, "logged", lambda c: c["guestConnected"] and c["bytesFromGuest"] == CHUNK)
            clients = [connect(info["clientSocket"]) for info in infos]
            wait_for(v, "attached", lambda c: c["clients"] == 1)
            for g in guests:
                g.sendall(out2)
            for i, c in enumerate(clients):
                got = read_exactly(c, 2 * CHUNK)
                if got != out1 + out2:
                    sys.exit(f"vm{i}: client got {len(got)} bytes, not replay + output")
            wait_for(v, "idle", lambda c: c["bytesFromGuest"] == 2 * CHUNK
                     and c["bytesDroppedForClients"] == 0)
            time.sleep(1.0)
            after = rss_mb(d.pid)
            fds = len(os.listdir(f"/proc/{d.pid}/fd"))
            print(f"after {n} consoles (created in {created:.2f} s), each with a guest and a "
                  f"client, idle: RSS {after:.1f} MB ({rss_detail(d.pid)}), daemon fds {fds}")
            print(f"per console: {(after - before) * 1e6 / n / 1024:.1f} KiB")
        finally:
            for s in guests + clients:
                s.close()
            v.close()
    ok = after <= TARGET_MB
    verdict = "ok" if ok else f"OVER target {TARGET_MB:.0f} MB"
    print(f"console memory: {n} idle consoles with guest and client, RSS {after:.1f} MB "
          f"(before {before:.1f} MB, +{after - before:.1f} MB; {verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
