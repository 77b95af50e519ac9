#!/usr/bin/env python3
"""Throughput and CPU cost of the real virtlogd against guestlogd's libvirt
front, the same writers for both, in one run. Started by
bench/virtlogd_vs_guestlogd.sh, which brings both daemons up (logs on disk,
libvirt's default policy: 2 MiB x 3 backups) and passes, per daemon,
NAME=SOCKET,PID,LOGPATH_DIR,DISK_DIR: LOGPATH_DIR is the directory named in
OpenLogFile, DISK_DIR where those files are seen from here (virtlogd runs
chrooted, so the two differ for it).

    virtlogd_vs_guestlogd.py --bytes B --pipes 1,8 --rounds R \\
        virtlogd=S,PID,/var/log/libvirt,DIR guestlogd=S,PID,DIR,DIR

One measurement (one daemon, N pipes, B bytes in all):
  * one connection, N OpenLogFile calls (flag TRUNCATE, as libvirt opens a
    chardev log), then the connection closes: the pipes live on;
  * N forked writers, each holding one pipe's write end, wait on a gate;
    each writes B/N bytes of printable, newline-terminated lines of varying
    length in 64 KiB os.write() calls (C speed: the daemon is the bottleneck),
    then one unique end-marker line, and exits;
  * the clock starts when the gate opens and stops when every log file ends
    with its marker (the file, or the newest backup plus the file when the
    marker was split by a rotation): everything the writers wrote is on
    disk (page cache). Rotation keeps at most 8 MiB per log, so file sizes
    cannot count 2 GiB; the daemon's /proc/PID/io wchar delta is printed as
    a check that it wrote every byte (it also counts its socket replies);
  * daemon CPU = utime + stime of /proc/PID/stat (all threads), read before
    the gate opens and again 0.3 s after the last marker showed up (the
    daemon has nothing left to do; the idle tail adds no CPU).
  * "others" = CPU-seconds the rest of the machine used during the run (from
    /proc/stat, minus the daemon, the writers and this process), divided by
    wall time: how many cores other users took from us.
MB = 10^6 bytes, GB = 10^9 bytes. The table keeps, per daemon and pipe count,
the best MB/s and the lowest CPU-s/GB of the rounds; every round is printed.
"""
import argparse
import os
import resource
import sys
import time
import uuid as uuidlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "virtlogd"))
import client as vl  # noqa: E402  the independent protocol client

BLOCK = 64 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_block(seed):
    """64 KiB of printable lines, 30..130 bytes each, the last one ending
    exactly at the block's end."""
    out, i = bytearray(), 0
    while True:
        n = 30 + (i * 37 + seed) % 101
        room = BLOCK - len(out)
        if room <= 130 + 30:
            n = room
        head = b"%08d guest console output " % i
        line = (head + b"abcdefghijklmnopqrstuvwxyz0123456789" * 4)[: n - 1] + b"\n"
        out += line
        i += 1
        if len(out) == BLOCK:
            return bytes(out)


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_wchar(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def machine_busy():
    """CPU-seconds, all cores, not idle or iowait, since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal
    return (total - v[3] - v[4]) / CLK_TCK


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tail(path, n):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read()
    except FileNotFoundError:
        return b""


def ended(disk_path, marker):
    t = tail(disk_path, 512)
    if t.endswith(marker):
        return True
    if len(t) < len(marker):  # split by a rotation: newest backup + file
        return (tail(disk_path + ".0", 512) + t).endswith(marker)
    return False


def writer(fd, share, block, marker, gate):
    os.read(gate, 1)
    left = share
    view = memoryview(block)
    while left > 0:
        n = min(left, BLOCK)
        off = 0
        while off < n:
            off += os.write(fd, view[off:n])
        left -= n
    os.write(fd, marker)
    os._exit(0)


def measure(d, pipes, total, tag):
    name = f"vlb-{tag}"
    shares = [total // pipes] * pipes
    shares[-1] += total - sum(shares)
    logs, fds = [], []
    with vl.Client(d["sock"], timeout=30) as c:
        for i in range(pipes):
            logical = f"{d['logdir']}/{name}-{i}.log"
            (_, _), fd = c.open_log_file("qemu", uuidlib.uuid4().bytes, f"{name}-{i}",
                                         logical, vl.OPEN_TRUNCATE)
            fds.append(fd)
            logs.append(f"{d['diskdir']}/{name}-{i}.log")
    markers = [b"END-OF-BENCH %s pipe %d\n" % (tag.encode(), i) for i in range(pipes)]
    gate_r, gate_w = os.pipe()
    kids = []
    for i in range(pipes):
        block = make_block(i * 7)
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            for j, fd in enumerate(fds):
                if j != i:
                    os.close(fd)
            writer(fds[i], shares[i], block, markers[i], gate_r)
        kids.append(pid)
    for fd in fds:
        os.close(fd)
    os.close(gate_r)
    time.sleep(0.2)  # let the forks settle
    cpu0, w0, busy0, me0 = proc_cpu(d["pid"]), proc_wchar(d["pid"]), machine_busy(), self_cpu()
    t0 = time.monotonic()
    os.write(gate_w, b"x" * pipes)
    kids_cpu = 0.0
    for pid in kids:
        _, status, ru = os.wait4(pid, 0)
        if status != 0:
            raise RuntimeError(f"writer {pid} failed: status {status}")
        kids_cpu += ru.ru_utime + ru.ru_stime
    t_writers = time.monotonic() - t0
    os.close(gate_w)
    pending = list(zip(logs, markers))
    deadline = t0 + 600
    while pending:
        pending = [(p, m) for p, m in pending if not ended(p, m)]
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{d['name']}: no end marker in {pending[0][0]}")
            time.sleep(0.002)
    wall = time.monotonic() - t0
    time.sleep(0.3)
    cpu = proc_cpu(d["pid"]) - cpu0
    wchar = proc_wchar(d["pid"]) - w0
    busy = machine_busy() - busy0
    me = self_cpu() - me0
    others = max(0.0, busy - cpu - kids_cpu - me) / (wall + 0.3)
    # Check the policy held: at most the file and 3 backups, none over 2 MiB.
    biggest, nfiles = 0, 0
    for p in logs:
        for suffix in [""] + [f".{k}" for k in range(8)]:
            if os.path.exists(p + suffix):
                nfiles += 1
                biggest = max(biggest, os.path.getsize(p + suffix))
                os.unlink(p + suffix)
    return {
        "daemon": d["name"], "pipes": pipes, "bytes": total + sum(map(len, markers)),
        "wall": wall, "writers": t_writers, "cpu": cpu, "wchar": wchar,
        "others": others, "files": nfiles, "biggest": biggest,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=2 << 30)
    ap.add_argument("--pipes", default="1,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("daemons", nargs=2, help="NAME=SOCKET,PID,LOGPATH_DIR,DISK_DIR")
    a = ap.parse_args()
    daemons = []
    for spec in a.daemons:
        nm, rest = spec.split("=", 1)
        sock, pid, logdir, diskdir = rest.split(",")
        daemons.append({"name": nm, "sock": sock, "pid": int(pid),
                        "logdir": logdir, "diskdir": diskdir})
    pipe_counts = [int(x) for x in a.pipes.split(",")]
    results = []
    hdr = (f"{'round':>5} {'daemon':<10} {'pipes':>5} {'MiB':>6} {'wall s':>7} "
           f"{'writers s':>9} {'MB/s':>7} {'CPU s':>6} {'CPU-s/GB':>8} "
           f"{'wchar MiB':>9} {'files':>5} {'max file':>8} {'others':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in range(a.rounds):
        for n in pipe_counts:
            order = daemons if r % 2 == 0 else daemons[::-1]
            for d in order:
                res = measure(d, n, a.bytes, f"{d['name']}-{n}-{r}-{os.getpid()}")
                results.append(res)
                mbs = res["bytes"] / res["wall"] / 1e6
                cpg = res["cpu"] / (res["bytes"] / 1e9)
                print(f"{r + 1:>5} {res['daemon']:<10} {n:>5} {res['bytes'] / 2**20:>6.0f} "
                      f"{res['wall']:>7.2f} {res['writers']:>9.2f} {mbs:>7.1f} "
                      f"{res['cpu']:>6.2f} {cpg:>8.2f} {res['wchar'] / 2**20:>9.0f} "
                      f"{res['files']:>5} {res['biggest']:>8} {res['others']:>6.2f}",
                      flush=True)
                if res["wchar"] < a.bytes:
                    # Bytes moved by splice(2) (guestlogd's pipes) are not
                    # counted in wchar; the end markers are the check.
                    print(f"  note: {res['daemon']}'s wchar counts {res['wchar']} bytes "
                          "(splice(2) is not counted there)")
                if res["biggest"] > 2 << 20:
                    print(f"  WARNING: a file over 2 MiB: {res['biggest']}")
    print()
    print("Best of the rounds (MB/s: highest; CPU-s/GB: lowest):")
    t = (f"{'daemon':<10} {'pipes':>5} {'MB/s':>8} {'CPU-s/GB':>9}")
    print(t)
    print("-" * len(t))
    best = {}
    for n in pipe_counts:
        for d in daemons:
            rs = [x for x in results if x["daemon"] == d["name"] and x["pipes"] == n]
            mbs = max(x["bytes"] / x["wall"] / 1e6 for x in rs)
            cpg = min(x["cpu"] / (x["bytes"] / 1e9) for x in rs)
            best[d["name"], n] = (mbs, cpg)
            print(f"{d['name']:<10} {n:>5} {mbs:>8.1f} {cpg:>9.2f}")
    base, new = daemons[0]["name"], daemons[1]["name"]
    print()
    print(f"Ratios {new}/{base} (target: throughput >= 5x, CPU per GB <= 0.15x):")
    for n in pipe_counts:
        (b_mbs, b_cpg), (n_mbs, n_cpg) = best[base, n], best[new, n]
        tp, cp = n_mbs / b_mbs, n_cpg / b_cpg if b_cpg else float("nan")
        print(f"  {n} pipe{'s' if n > 1 else ' '}: throughput {tp:5.2f}x "
              f"[{'met' if tp >= 5 else 'NOT met'}]   CPU per GB {cp:5.3f}x "
              f"[{'met' if cp <= 0.15 else 'NOT met'}]")


main()
