"""Shared helpers of the console benchmarks (bench/console_*.py).

Standard library only: varlink is spoken as raw JSON + NUL over the
daemon's socket, fake guests and clients are plain unix stream sockets, and
helper processes are forked children that report one JSON object back over
a pipe. Every child dies with its parent (PR_SET_PDEATHSIG), and `Daemon`
stops the daemon and removes its temporary directory on exit.
"""

import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUESTLOGD = Path(os.environ.get("GUESTLOGD", ROOT / "target/release/guestlogd"))
MANAGER = "io.guestlogd.Manager"


class VarlinkError(Exception):
    pass


class Varlink:
    """A blocking varlink connection: one call at a time."""

    def __init__(self, path: str | Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def _reply(self) -> dict:
        while (end := self.buf.find(b"\0")) < 0:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise VarlinkError("connection closed")
            self.buf += chunk
        reply = json.loads(self.buf[:end])
        del self.buf[: end + 1]
        if "error" in reply:
            raise VarlinkError(f"{reply['error']} {reply.get('parameters')}")
        return reply

    def call(self, method: str, params: dict | None = None) -> dict:
        msg = {"method": f"{MANAGER}.{method}", "parameters": params or {}}
        self.sock.sendall(json.dumps(msg).encode() + b"\0")
        return self._reply().get("parameters", {})

    def list(self) -> dict:
        """ListLogs with "more": pages of at most 256 entries, so it works
        at any number of logs and consoles (without it a reply past
        max-message-size is refused)."""
        msg = {"method": f"{MANAGER}.ListLogs", "parameters": {}, "more": True}
        self.sock.sendall(json.dumps(msg).encode() + b"\0")
        out = {"logs": [], "consoles": []}
        while True:
            reply = self._reply()
            params = reply.get("parameters", {})
            for key in out:
                out[key] += params.get(key, [])
            if not reply.get("continues"):
                return out

    def console(self, name: str) -> dict:
        for c in self.list()["consoles"]:
            if c["name"] == name:
                return c
        raise VarlinkError(f"no console {name}")

    def log(self, name: str) -> dict:
        for lg in self.list()["logs"]:
            if lg["name"] == name:
                return lg
        raise VarlinkError(f"no log {name}")

    def wait_console(self, name: str, clients: int, timeout: float = 10) -> dict:
        """Until the console's guest is connected and `clients` are attached."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.console(name)
            if c["guestConnected"] and c["clients"] == clients:
                return c
            if time.monotonic() > deadline:
                raise VarlinkError(f"console {name} not ready: {c}")
            time.sleep(0.005)

    def close(self):
        self.sock.close()


def connect(path: str | Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def raise_nofile(want: int):
    """Raised in this process before the daemon starts, so it inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mb(pid: int) -> float:
    return int(status(pid)["VmRSS"].split()[0]) * 1024 / 1e6


def rss_detail(pid: int) -> str:
    s = status(pid)
    return ", ".join(f"{k} {s[k]}" for k in ("RssAnon", "RssFile", "Threads") if k in s)


def percentile(sorted_values: list, p: float):
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def spawn(fn, *args) -> tuple[int, int]:
    """Forks a child that runs fn(*args) and writes its JSON result to a pipe.
    The child keeps only stdio, the pipe and the sockets among `args`, so
    that a peer's end closing is seen as EOF."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            keep = {0, 1, 2, w} | {a.fileno() for a in args if isinstance(a, socket.socket)}
            for fd in map(int, os.listdir("/proc/self/fd")):
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            result = fn(*args)
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            result = {"error": repr(e)}
        try:
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def collect(child: tuple[int, int]) -> dict:
    pid, r = child
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "no result"}')
    if "error" in result:
        raise RuntimeError(f"child failed: {result['error']}")
    return result


def kill_child(child: tuple[int, int]):
    pid, r = child
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    try:
        os.close(r)
    except OSError:
        pass


def write_bytes(sock: socket.socket, buf: bytes, total: int) -> dict:
    """A fake guest: writes `total` bytes, repeating `buf`, as fast as it can."""
    mv = memoryview(buf)
    t0 = time.monotonic_ns()
    left = total
    while left:
        k = min(left, len(mv))
        sock.sendall(mv[:k])
        left -= k
    return {"t0": t0, "t1": time.monotonic_ns()}


def read_bytes(sock: socket.socket, total: int, idle: float = 5.0) -> dict:
    """A client: reads until `total` bytes came, or nothing came for `idle` s."""
    buf = bytearray(1 << 20)
    got = 0
    sock.settimeout(idle)
    t1 = None
    try:
        while got < total:
            n = sock.recv_into(buf)
            if n == 0:
                break
            got += n
            t1 = time.monotonic_ns()
    except TimeoutError:
        pass
    return {"got": got, "t1": t1 or time.monotonic_ns()}


def on_signal_exit():
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` cleans up."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


class Daemon:
    """The release daemon in a temporary directory, stopped and removed on exit."""

    def __init__(self, config: str, prefix: str = "guestlogd-bench."):
        self.config_text = config
        self.prefix = prefix
        self.proc = None
        self.tmp = None

    def __enter__(self):
        if not GUESTLOGD.exists():
            sys.exit(f"{GUESTLOGD} missing: run cargo build --release")
        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix))
        config = self.tmp / "config.toml"
        config.write_text(self.config_text)
        self.sock = self.tmp / "run" / "io.guestlogd.Manager"
        self.proc = subprocess.Popen(
            [GUESTLOGD, "--runtime-dir", self.tmp / "run", "--log-dir", self.tmp / "log",
             "--config", config],
            stderr=open(self.tmp / "daemon.err", "wb"),
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.tmp / "daemon.err").read_text()
                self.__exit__(None, None, None)
                sys.exit("daemon did not start:\n" + err)
            time.sleep(0.02)
        time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        return False
