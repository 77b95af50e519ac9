#!/var/cache/guestlogd-test/venv/bin/python
"""The daemon's resident memory with many idle pipes.

    /var/cache/guestlogd-test/venv/bin/python bench/memory.py [PIPES]

Starts the release daemon in a temporary directory, reads its VmRSS, opens
PIPES (default 1000) pipes with OpenPipe over one connection, keeping every
write end open and idle, and reads VmRSS again. Target: at most 20 MB.
Everything (daemon, descriptors, temporary directory) is cleaned up.
"""

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asyncvarlink import VarlinkClientProtocol, VarlinkMethodCall, connect_unix_varlink
from asyncvarlink.util import completing_future

ROOT = Path(__file__).resolve().parent.parent
GUESTLOGD = Path(os.environ.get("GUESTLOGD", ROOT / "target/release/guestlogd"))
TARGET_MB = 20.0


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    kib = int(status(pid)["VmRSS"].split()[0])
    return kib * 1024 / 1e6


def rss_detail(pid: int) -> str:
    s = status(pid)
    return ", ".join(f"{k} {s[k]}" for k in ("RssAnon", "RssFile", "Threads") if k in s)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def open_pipes(sock: str, n: int) -> list[int]:
    transport, proto = await connect_unix_varlink(VarlinkClientProtocol, sock)
    fds: list[int] = []
    try:
        for i in range(n):
            with completing_future() as done:
                reply, recv = await proto.call(
                    VarlinkMethodCall("io.guestlogd.Manager.OpenPipe", {"name": f"vm{i}"}),
                    replyfdsdone=done,
                )
                fds.append(os.dup(recv[reply.parameters["fileDescriptor"]].fileno()))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        transport.close()
    return fds


def main() -> int:
    pipes = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if not GUESTLOGD.exists():
        print(f"{GUESTLOGD} missing: run cargo build --release", file=sys.stderr)
        return 1
    # Raised here so the daemon, our child, inherits it too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = pipes * 2 + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            print(f"RLIMIT_NOFILE hard limit {hard} < {want}", file=sys.stderr)
            return 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    tmp = Path(tempfile.mkdtemp(prefix="guestlogd-mem."))
    daemon = None
    fds: list[int] = []
    try:
        config = tmp / "config.toml"
        config.write_text(f"[limits]\nmax-pipes = {pipes + 100}\n")
        sock = tmp / "run" / "io.guestlogd.Manager"
        daemon = subprocess.Popen(
            [GUESTLOGD, "--runtime-dir", tmp / "run", "--log-dir", tmp / "log",
             "--config", config],
            stderr=open(tmp / "daemon.err", "wb"),
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                print("daemon did not start:\n" + (tmp / "daemon.err").read_text(),
                      file=sys.stderr)
                return 1
            time.sleep(0.02)
        time.sleep(0.2)
        before = rss_mb(daemon.pid)
        print(f"before: RSS {before:.1f} MB ({rss_detail(daemon.pid)})")

        t0 = time.monotonic()
        fds = asyncio.run(open_pipes(str(sock), pipes))
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        after = rss_mb(daemon.pid)
        print(f"after {len(fds)} OpenPipe calls in {elapsed:.2f} s: RSS {after:.1f} MB "
              f"({rss_detail(daemon.pid)}), daemon fds {open_fds(daemon.pid)}")
        per_pipe = (after - before) * 1e6 / max(len(fds), 1)
        print(f"per pipe: {per_pipe / 1024:.1f} KiB")
        verdict = "ok" if after <= TARGET_MB else f"OVER target {TARGET_MB:.0f} MB"
        print(f"memory: {len(fds)} idle pipes, RSS {after:.1f} MB "
              f"(before {before:.1f} MB; {verdict})")
        return 0 if after <= TARGET_MB else 1
    finally:
        for fd in fds:
            os.close(fd)
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
