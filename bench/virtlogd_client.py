#!/usr/bin/env python3
"""Smoke/throughput client for a virtlogd-protocol socket (the real virtlogd
from bench/virtlogd_baseline.sh, or guestlogd later): OpenLogFile (as libvirt
does for NAME.log, flag TRUNCATE), writes BYTES numbered lines into the
returned pipe, closes it, then GetLogFilePosition (the daemon drains the pipe
before answering) and ReadLogFile of the last bytes. Prints MB/s.

    python3 bench/virtlogd_client.py SOCKET [BYTES] [PATH]
    (default 64 MiB into /var/log/libvirt/bench.log)
Wire format: /work/shared/notes/virtlogd-protocol.md."""
import array
import os
import socket
import struct
import sys
import time
import uuid

PROG, VERS = 0x87539319, 1
CALL, REPLY, REPLY_WITH_FDS = 0, 1, 5
OPEN, POSITION, READ = 1, 2, 3


def xstr(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) % 4)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.serial = 0

    def call(self, proc, payload):
        head = struct.pack(">6I", PROG, VERS, proc, CALL, self.serial, 0)
        self.sock.sendall(struct.pack(">I", 4 + len(head) + len(payload)) + head + payload)
        (length,) = struct.unpack(">I", recv_exact(self.sock, 4))
        msg = recv_exact(self.sock, length - 4)
        prog, vers, rproc, typ, serial, status = struct.unpack(">6I", msg[:24])
        assert (prog, vers, rproc, serial) == (PROG, VERS, proc, self.serial), msg[:24]
        self.serial += 1
        body, fds = msg[24:], []
        if status != 0:
            raise RuntimeError(f"error reply: {body!r}")
        if typ == REPLY_WITH_FDS:
            (nfds,), body = struct.unpack(">I", body[:4]), body[4:]
            for _ in range(nfds):  # one sendmsg per fd, one data byte each
                fdarr = array.array("i")
                _, anc, _, _ = self.sock.recvmsg(1, socket.CMSG_SPACE(fdarr.itemsize))
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fdarr.frombytes(data[: fdarr.itemsize])
                fds.extend(fdarr)
        return body, fds


def main():
    path = sys.argv[1]
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 64 << 20
    log = sys.argv[3] if len(sys.argv) > 3 else "/var/log/libvirt/bench.log"
    c = Client(path)
    dom = uuid.uuid4().bytes + xstr("bench")
    body, fds = c.call(OPEN, xstr("qemu") + dom + xstr(log) + struct.pack(">I", 1))
    inode, offset = struct.unpack(">QQ", body[:16])
    print(f"OpenLogFile {log}: inode {inode} offset {offset}, fds {fds}")
    line = b"".join(b"bench line %08d %s\n" % (i, b"x" * 44) for i in range(1024))  # 64 KiB
    t0 = time.monotonic()
    written = 0
    with os.fdopen(fds[0], "wb", buffering=0) as pipe:
        while written < total:
            written += pipe.write(line)
    t1 = time.monotonic()
    body, _ = c.call(POSITION, xstr(log) + struct.pack(">I", 0))
    t2 = time.monotonic()
    inode, offset = struct.unpack(">QQ", body[:16])
    start = max(0, offset - 128)
    body, _ = c.call(READ, xstr(log) + struct.pack(">QQQI", inode, start, 4096, 0))
    (n,) = struct.unpack(">I", body[:4])
    tail = body[4 : 4 + n].decode(errors="replace").splitlines()
    print(f"wrote {written} bytes in {t1 - t0:.3f} s; drained (GetLogFilePosition) after "
          f"{t2 - t0:.3f} s: {written / (t2 - t0) / 1e6:.1f} MB/s; position inode {inode} "
          f"offset {offset}; last line: {tail[-1] if tail else None!r}")


main()
