#!/var/cache/guestlogd-test/venv/bin/python
"""Interactive latency: a keystroke's round trip client -> guest -> client.

    /var/cache/guestlogd-test/venv/bin/python bench/console_latency.py [ROUNDS]

The client writes 1 byte and waits for it to come back; a fake guest (a
forked child) echoes every byte it reads at once. Through guestlogd the byte
goes client socket -> relay -> guest socket and the echo, guest output,
goes relay -> log -> client (console with replayBytes 0). The baseline is
the same client and the same echo child over a direct socketpair. ROUNDS
(default 2000) round trips are timed for each, in alternating blocks of 200
after 200 untimed ones each; p50 and p99 are printed with the ratio
guestlogd/direct. No target is set: the figure is for information.
"""

import socket
import sys
import time

from console_common import (
    Daemon, Varlink, collect, connect, kill_child, on_signal_exit, percentile, spawn,
)

BLOCK = 200


def echo(sock: socket.socket) -> dict:
    n = 0
    while data := sock.recv(4096):
        sock.sendall(data)
        n += len(data)
    return {"echoed": n}


def ping(sock: socket.socket, rounds: int) -> list[int]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        sock.send(b"x")
        if sock.recv(16) != b"x":
            raise RuntimeError("echo mismatch")
        out.append(time.perf_counter_ns() - t0)
    return out


def main() -> int:
    on_signal_exit()
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    config = "[limits]\nmax-consoles = 8\n"
    children = []
    with Daemon(config, "guestlogd-lat.") as d:
        v = Varlink(d.sock)
        try:
            a, b = socket.socketpair()
            children.append(spawn(echo, b))
            b.close()
            direct = a

            info = v.call("CreateConsole", {"name": "lat", "replayBytes": 0})
            guest = connect(info["guestSocket"])
            children.append(spawn(echo, guest))
            guest.close()
            relayed = connect(info["clientSocket"])
            v.wait_console("lat", clients=1)

            ping(direct, BLOCK)
            ping(relayed, BLOCK)
            times = {"direct": [], "guestlogd": []}
            while len(times["guestlogd"]) < rounds:
                n = min(BLOCK, rounds - len(times["guestlogd"]))
                times["direct"] += ping(direct, n)
                times["guestlogd"] += ping(relayed, n)
            direct.close()
            relayed.close()
            c = v.console("lat")
            v.call("RemoveConsole", {"name": "lat"})  # hangs up on the echo guest
            for child in children:
                collect(child)
            children.clear()
        finally:
            for child in children:
                kill_child(child)
            v.close()
    total = rounds + BLOCK
    if c["bytesToGuest"] != total or c["bytesFromGuest"] != total:
        sys.exit(f"bytesToGuest {c['bytesToGuest']} bytesFromGuest {c['bytesFromGuest']}, "
                 f"expected {total}")
    p = {}
    for label, values in times.items():
        values.sort()
        p[label] = (percentile(values, 50) / 1e3, percentile(values, 99) / 1e3)
        print(f"{label:9}: p50 {p[label][0]:7.1f} us, p99 {p[label][1]:7.1f} us, "
              f"max {values[-1] / 1e3:.1f} us ({len(values)} round trips)")
    g, dr = p["guestlogd"], p["direct"]
    print(f"console latency: {rounds} round trips, guestlogd p50 {g[0]:.1f} us p99 {g[1]:.1f} us, "
          f"direct p50 {dr[0]:.1f} us p99 {dr[1]:.1f} us, ratio p50 {g[0] / dr[0]:.1f} "
          f"p99 {g[1] / dr[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
