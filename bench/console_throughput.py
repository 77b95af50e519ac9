#!/var/cache/guestlogd-test/venv/bin/python
"""Console throughput, guest to one client, against a socat relay baseline.

    /var/cache/guestlogd-test/venv/bin/python bench/console_throughput.py [BYTES]

BYTES (default 1 GiB) are written by a fake guest, as fast as it can, from a
64 MiB buffer of random bytes made once; one client reads everything. A run
is timed from the guest's first write to the client's last byte. The
guestlogd run uses a fresh console per run (replayBytes 0, log capped at
64 MiB x 4 backups) and checks afterwards that ListLogs shows bytesWritten
== bytesFromGuest == BYTES and nothing dropped for the client. The baseline
is `socat -b 65536 UNIX-LISTEN:g UNIX-LISTEN:c` relaying the same bytes from
the same writer to the same reader, with no log. Writer and reader are
forked children, in both runs; both are connected (and, for guestlogd,
ListLogs shows the guest connected and the client attached) before the
writer starts. Rounds alternate socat, guestlogd; the best of RUNS (default
3) counts; the client's losses are counted in every round. Target:
guestlogd/socat >= 0.8 with no byte lost for the client in any round.
guestlogd's rate is what the client received over the time to its last byte.
"""

import os
import subprocess
import sys
import time

from console_common import (
    Daemon, Varlink, collect, connect, kill_child, on_signal_exit, read_bytes, spawn,
    write_bytes,
)

TARGET = 0.8
MAX_SIZE = 64 * 1024 * 1024
MAX_BACKUPS = 4
BUF = os.urandom(64 * 1024 * 1024)


def relay(guest, client, total: int) -> tuple[float, int]:
    """Runs writer and reader over connected sockets; seconds and bytes read."""
    reader = writer = None
    try:
        reader = spawn(read_bytes, client, total)
        client.close()
        writer = spawn(write_bytes, guest, BUF, total)
        guest.close()
        w = collect(writer)
        writer = None
        r = collect(reader)
        reader = None
    finally:
        for child in (reader, writer):
            if child is not None:
                kill_child(child)
    return (r["t1"] - w["t0"]) / 1e9, r["got"], (w["t1"] - w["t0"]) / 1e9


def run_socat(d: Daemon, i: int, total: int) -> float:
    g, c = d.tmp / f"socat{i}.g", d.tmp / f"socat{i}.c"
    proc = subprocess.Popen(["socat", "-b", "65536", f"UNIX-LISTEN:{g}", f"UNIX-LISTEN:{c}"])
    try:
        for path in (g, c):
            deadline = time.monotonic() + 10
            while not path.exists():
                if time.monotonic() > deadline:
                    sys.exit(f"socat did not listen on {path}")
                time.sleep(0.005)
            sock = connect(path)
            if path == g:
                guest = sock
            else:
                client = sock
        secs, got, _ = relay(guest, client, total)
    finally:
        proc.kill()
        proc.wait()
    if got != total:
        sys.exit(f"socat: client got {got} of {total} bytes")
    return secs


def run_guestlogd(d: Daemon, v: Varlink, i: int, total: int) -> tuple[float, int, str]:
    """Seconds to the client's last byte, bytes the client got, and a note.
    The client may get fewer than `total` bytes: the guest is never slowed
    for it, so what it falls 256 KiB behind on is dropped (and counted)."""
    name = f"tp{i}"
    info = v.call("CreateConsole", {"name": name, "replayBytes": 0,
                                    "maxSize": MAX_SIZE, "maxBackups": MAX_BACKUPS})
    guest = connect(info["guestSocket"])
    client = connect(info["clientSocket"])
    v.wait_console(name, clients=1)
    secs, got, wsecs = relay(guest, client, total)
    # The client may have the last read before the log's write of it is
    # done and counted: wait for the figures, briefly.
    deadline = time.monotonic() + 10
    while v.console(name)["bytesFromGuest"] < total and time.monotonic() < deadline:
        time.sleep(0.01)
    c, lg = v.console(name), v.log(name)
    v.call("RemoveConsole", {"name": name})
    problems = []
    if c["bytesFromGuest"] != total:
        problems.append(f"bytesFromGuest {c['bytesFromGuest']}")
    if lg["bytesWritten"] != total or lg["bytesDropped"] != 0:
        problems.append(f"log bytesWritten {lg['bytesWritten']} bytesDropped {lg['bytesDropped']}")
    if lg["size"] > MAX_SIZE or lg["backups"] > MAX_BACKUPS:
        problems.append(f"cap broken: size {lg['size']} backups {lg['backups']}")
    if problems:
        sys.exit(f"run {i}: guestlogd FAILED: {'; '.join(problems)}")
    note = (f"guest done in {wsecs:.3f} s, log bytesWritten {lg['bytesWritten']} ok, "
            f"client got {got}, dropped for client {c['bytesDroppedForClients']}")
    return secs, got, note


def main() -> int:
    on_signal_exit()
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
    runs = int(os.environ.get("RUNS", 3))
    config = "[limits]\nmax-consoles = 64\nmax-clients = 16\n[log]\n" \
             f"max-size = {MAX_SIZE}\nmax-backups = {MAX_BACKUPS}\n"
    mbs = lambda s: total / s / 1e6  # noqa: E731
    best_socat = float("inf")
    best_gld = (float("inf"), 0)  # seconds, bytes the client got
    short = 0
    with Daemon(config, "guestlogd-tput.") as d:
        v = Varlink(d.sock)
        try:
            for i in range(1, runs + 1):
                s = run_socat(d, i, total)
                print(f"run {i}: socat     {mbs(s):8.1f} MB/s ({s:.3f} s)", flush=True)
                best_socat = min(best_socat, s)
                s, got, note = run_guestlogd(d, v, i, total)
                print(f"run {i}: guestlogd {got / s / 1e6:8.1f} MB/s ({s:.3f} s; {note})",
                      flush=True)
                short += got != total
                if got / s > best_gld[1] / best_gld[0]:
                    best_gld = (s, got)
        finally:
            v.close()
    gld = best_gld[1] / best_gld[0] / 1e6
    ratio = gld / mbs(best_socat)
    ok = ratio >= TARGET and not short
    verdict = "ok" if ratio >= TARGET else f"target {TARGET} MISSED"
    print(f"console throughput: {total} bytes, guestlogd {gld:.1f} MB/s (client-received), "
          f"socat {mbs(best_socat):.1f} MB/s, ratio {ratio:.2f} ({verdict}); "
          f"client lost bytes in {short} of {runs} rounds")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
