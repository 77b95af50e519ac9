#!/var/cache/guestlogd-test/venv/bin/python
"""The daemon's resident memory and descriptors with many idle consoles.

    /var/cache/guestlogd-test/venv/bin/python bench/console_memory.py [CONSOLES]

Starts the release daemon in a temporary directory and reads its VmRSS and
descriptors. Then creates CONSOLES (default 4096, the daemon's default
max-consoles; fewer where the hard RLIMIT_NOFILE cannot hold 5 descriptors
per console, and it says so) consoles (each with a log, default
replay of 16 KiB) over one varlink connection, connects a fake guest to each
and has it write 4 KiB, attaches one client to each (its replay is those
4 KiB), has every guest write 4 KiB more and every client read its 8 KiB,
so logs, replay and client queues have all been used. With everything idle
and connected it reads VmRSS and the descriptors again, and once more after
the idle logs have closed their files. The baseline is the same daemon
before any console, measured in the same run. Targets: at most 16 KiB and
5 descriptors per console. RLIMIT_NOFILE is raised to its hard limit for
this process and the daemon (2 sockets per console here; 2 listeners, 2
connections and a log file per console there). ListLogs is called with
"more", so it works at any number of consoles.
"""

import os
import resource
import sys
import time

from console_common import (
    Daemon, Varlink, connect, on_signal_exit, raise_nofile, rss_detail, rss_mb, status,
)

TARGET_KIB = 16.0
TARGET_FDS = 5
CHUNK = 4096
DEFAULT = 4096
# The daemon's own descriptors beyond its consoles', with room to spare.
SLACK = 256


def wait_for(v: Varlink, what: str, test, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        consoles = v.list()["consoles"]
        bad = [c for c in consoles if not test(c)]
        if not bad:
            return
        if time.monotonic() > deadline:
            sys.exit(f"{len(bad)} consoles not {what}, e.g. {bad[0]}")
        time.sleep(0.05)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


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
    want = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = want if hard == resource.RLIM_INFINITY else (hard - SLACK) // TARGET_FDS
    n = min(want, most)
    if n < want:
        print(f"the hard RLIMIT_NOFILE ({hard}) holds {TARGET_FDS} descriptors for at most {n} "
              f"consoles: running {n}, not {want}", flush=True)
    raise_nofile(min(hard, max(n * TARGET_FDS + SLACK, 1024)))
    # The daemon's defaults, but for a few more consoles than measured.
    config = f"[limits]\nmax-consoles = {max(n + 100, DEFAULT)}\n"
    out1, out2 = os.urandom(CHUNK), os.urandom(CHUNK)
    guests, clients = [], []
    with Daemon(config, "guestlogd-cmem.") as d:
        v = Varlink(d.sock)
        try:
            before = rss_mb(d.pid)
            fds_before = fd_count(d.pid)
            print(f"before: RSS {before:.1f} MB ({rss_detail(d.pid)}), fds {fds_before}",
                  flush=True)
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
            fds = fd_count(d.pid)
            print(f"after {n} consoles (created in {created:.2f} s), each with a guest and a "
                  f"client, idle: RSS {after:.1f} MB ({rss_detail(d.pid)}), daemon fds {fds}")
            # Idle logs close their files within two sweeps (5 s each), and
            # the blocking threads that ran the replays' reads end after
            # 10 s idle (tokio's keep-alive): idle means both.
            deadline = time.monotonic() + 30
            while ((fd_count(d.pid) > fds_before + 4 * n
                    or int(status(d.pid)["Threads"]) > 2 * os.cpu_count() + 4)
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            time.sleep(1.0)
            fds_idle = fd_count(d.pid)
            after = rss_mb(d.pid)
            kib = (after - before) * 1e6 / n / 1024
            per_fd, per_fd_idle = (fds - fds_before) / n, (fds_idle - fds_before) / n
            print(f"after the logs' idle sweep: RSS {after:.1f} MB ({rss_detail(d.pid)}), "
                  f"daemon fds {fds_idle}")
            print(f"per console: {kib:.1f} KiB (target {TARGET_KIB:.0f}), descriptors "
                  f"{per_fd:.2f} while in use, {per_fd_idle:.2f} idle (target {TARGET_FDS})")
        finally:
            for s in guests + clients:
                s.close()
            v.close()
    # The daemon's own few (its log directory, the saved state's memfd)
    # are not the consoles'.
    ok = kib <= TARGET_KIB and fds - fds_before <= TARGET_FDS * n + 4
    verdict = "ok" if ok else "target MISSED"
    print(f"console memory: {n} idle consoles with guest and client, RSS {after:.1f} MB "
          f"against {before:.1f} MB before them in the same run: {after / before:.2f}x, "
          f"{kib:.1f} KiB and {per_fd:.2f} descriptors ({per_fd_idle:.2f} idle) per console "
          f"({verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
