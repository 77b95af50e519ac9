"""Protocol checks of guestlogd's libvirt front (libvirt's log manager
protocol, program 0x87539319 v1), against the real daemon, through the
independent client in client.py. Standard library only.

Usage:
    protocol.py main     SOCKET ROOT   the procedures, flags, errors, framing
    protocol.py rotation SOCKET ROOT   a daemon with [libvirt] max-size = 4096,
                                       max-backups = 2
    protocol.py nonroot  SOCKET ROOT   run as a uid other than 0
    protocol.py exclusive SOCKET ROOT  concurrent OpenLogFile of one path
    protocol.py unlinked SOCKET ROOT   a log unlinked by libvirt (--remove-logs)
    protocol.py recreated SOCKET ROOT  a log directory removed and made again

ROOT is the one directory of [libvirt] roots; ROOT/qemu exists. The checks
are numbered and run in order; the first failure prints "FAIL <n> <what>:
<why>" and exits 1. Outside files are made in ROOT/../outside.

Nothing here asserts on time: waits poll with generous deadlines.
"""

import errno
import fcntl
import os
import shutil
import socket
import stat
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client as c  # noqa: E402

UUID = bytes.fromhex("c7a5fdbdedaf9455926ad65c16db1809")
DEADLINE = 10.0  # seconds, for anything that waits on the daemon
QUIET = 0.5      # how long "nothing arrives" is watched


class Failure(Exception):
    pass


def expect(cond, why):
    if not cond:
        raise Failure(why)


def eq(got, want, what):
    if got != want:
        raise Failure(f"{what}: got {got!r}, want {want!r}")


_number = 0


def check(what):
    """Decorator-free numbering: check("...") prints as it starts."""
    global _number
    _number += 1
    print(f"{_number:3d} {what}", flush=True)
    return _number


def run(checks):
    for what, fn in checks:
        n = check(what)
        try:
            fn()
        except Failure as e:
            print(f"FAIL {n} {what}: {e}", flush=True)
            sys.exit(1)
        except Exception as e:  # an unexpected exception is a failure too
            print(f"FAIL {n} {what}: {type(e).__name__}: {e!r}", flush=True)
            sys.exit(1)
    print(f"OK: {_number} checks passed", flush=True)


# --- helpers -------------------------------------------------------------------

def connect():
    return c.Client(SOCKET, timeout=DEADLINE)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write_all(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]


def poll(cond, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise Failure(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.02)


def wait_content(path, want):
    def ok():
        try:
            return read(path) == want
        except FileNotFoundError:
            return False
    try:
        poll(ok, f"{path} to hold {len(want)} bytes")
    except Failure:
        got = read(path) if os.path.exists(path) else None
        raise Failure(f"{path}: got {got!r}, want {want!r}")


def error_of(fn, *args):
    """The LogManagerError `fn` raises; a success is a failure."""
    try:
        got = fn(*args)
    except c.LogManagerError as e:
        return e
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], int) \
            and got[1] > 2:
        os.close(got[1])
    raise Failure(f"expected an error reply, got success {got!r}")


def expect_closed(sock, what):
    """The daemon closes `sock` without sending a byte."""
    sock.settimeout(DEADLINE)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return
    except socket.timeout:
        raise Failure(f"{what}: connection still open after {DEADLINE}s")
    eq(data, b"", f"{what}: bytes before the close")


def expect_quiet(cl, what):
    """Nothing unsolicited arrives on an open connection, and it stays open."""
    cl.sock.settimeout(QUIET)
    try:
        data = cl.sock.recv(4096)
    except socket.timeout:
        cl.sock.settimeout(DEADLINE)
        return
    if data:
        raise Failure(f"{what}: unsolicited bytes {data[:64].hex()}")
    raise Failure(f"{what}: the daemon closed an idle connection")


def raw_call(cl, proc, payload, prog=c.PROGRAM, vers=c.VERSION, kind=c.CALL):
    """Sends a hand-made call with the connection's next serial; returns
    that serial."""
    serial = cl.serial
    cl.serial += 1
    body = struct.pack(">IIiIIi", prog, vers, proc, kind, serial, c.OK) + payload
    cl.sock.sendall(c.x_u32(len(body) + 4) + body)
    return serial


def recv_error_frame(cl, proc, serial, prog=c.PROGRAM, vers=c.VERSION):
    header, payload, fds = cl.recv_frame()
    for fd in fds:
        os.close(fd)
    eq(fds, [], "FDs with an error reply")
    eq((header["prog"], header["vers"], header["proc"], header["serial"]),
       (prog, vers, proc, serial), "reply header (prog, vers, proc, serial)")
    eq(header["type"], c.REPLY, "error reply type")
    eq(header["status"], c.ERROR, "error reply status")
    return c.decode_error(payload)


def open_log(cl, path, flags=0, name="vm1", driver="QEMU"):
    return cl.open_log_file(driver, UUID, name, path, flags)


def expect_busy(e, path):
    eq((e.code, e.domain), (c.ERR_SYSTEM_ERROR, c.FROM_LOGGING),
       f"(code, domain) of {e!r}")
    eq(e.message, f"Cannot open log file: '{path}': Device or resource busy",
       "EBUSY message")
    eq(e.int1, errno.EBUSY, "int1 (errno) of the EBUSY error")


def open_when_free(cl, path, flags=0):
    """OpenLogFile, retried while the daemon still sees a writer: each
    refusal must be EBUSY."""
    end = time.monotonic() + DEADLINE
    while True:
        try:
            return open_log(cl, path, flags)
        except c.LogManagerError as e:
            expect_busy(e, path)
            if time.monotonic() > end:
                raise Failure(f"{path} still busy {DEADLINE}s after its "
                              "writers closed the pipe")
            time.sleep(0.05)


def tree(top):
    """Every path under `top`, with its size for files."""
    out = []
    for d, dirs, files in os.walk(top):
        for f in dirs + files:
            p = os.path.join(d, f)
            out.append((p, os.lstat(p).st_size if f in files else None))
    return sorted(out, key=lambda x: x[0])


def no_such(path, what):
    expect(not os.path.lexists(path), f"{what}: {path} was created")


# --- main ----------------------------------------------------------------------

def main_checks():
    Q = os.path.join(ROOT, "qemu")
    VM1 = os.path.join(Q, "vm1.log")
    OUTSIDE = os.path.join(os.path.dirname(ROOT), "outside")
    os.makedirs(OUTSIDE, exist_ok=True)
    st = {}  # state shared between the checks

    def open_vm1():
        cl = connect()
        st["cl"] = cl
        serial = cl.send_open_log_file("QEMU", UUID, "vm1", VM1, 0)
        header, payload, fds = cl.recv_frame()
        eq((header["prog"], header["vers"], header["proc"], header["serial"]),
           (c.PROGRAM, c.VERSION, c.PROC_OPEN_LOG_FILE, serial), "reply header")
        cl.pending.pop()
        eq(header["type"], c.REPLY_WITH_FDS, "reply type")
        eq(header["status"], c.OK, "reply status")
        eq(len(fds), 1, "FDs received after the reply")
        fd = fds[0]
        st["fd"] = fd
        inode, offset = c.decode_reply(c.PROC_OPEN_LOG_FILE, payload)
        expect(stat.S_ISREG(os.lstat(VM1).st_mode), f"{VM1} is not a regular file")
        eq(inode, os.stat(VM1).st_ino, "Position.inode vs the file's inode")
        eq(offset, 0, "Position.offset of a new log")
        st["pos0"] = (inode, offset)
        s = os.fstat(fd)
        expect(stat.S_ISFIFO(s.st_mode), "the FD is not a pipe")
        eq(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE, os.O_WRONLY,
           "the FD's access mode")

    def pipe_reaches_file():
        st["header"] = b"2024-01-01 starting up libvirt version: 11.3.0\nLC_ALL=C qemu-system-x86_64 -name vm1\n"
        write_all(st["fd"], st["header"])
        wait_content(VM1, st["header"])
        # Only at that exact path: nothing else appeared in the directory.
        eq(sorted(os.listdir(Q)), ["vm1.log"], "files in ROOT/qemu")

    def position_after_header():
        # Written and asked at once: the daemon must drain the pipe first.
        more = b"qemu: boot line\n" * 64
        write_all(st["fd"], more)
        st["header"] += more
        pos = st["cl"].get_log_file_position(VM1)
        eq(pos, (st["pos0"][0], len(st["header"])), "position after the header")
        st["pos1"] = pos

    def read_from_open_position():
        data = st["cl"].read_log_file(VM1, *st["pos0"], 131072)
        eq(data, st["header"], "ReadLogFile from OpenLogFile's position")
        eq(st["cl"].read_log_file(VM1, *st["pos0"], 4), st["header"][:4],
           "ReadLogFile maxlen 4")
        eq(st["cl"].read_log_file(VM1, *st["pos1"], 131072), b"",
           "ReadLogFile at the end")
        tail = b"qemu-system-x86_64: cannot set up guest memory\n"
        write_all(st["fd"], tail)
        pos = st["cl"].get_log_file_position(VM1)
        eq(pos[1], len(st["header"]) + len(tail), "position after the tail")
        eq(st["cl"].read_log_file(VM1, *st["pos1"], 131072), tail,
           "ReadLogFile from GetLogFilePosition's position")
        st["header"] += tail

    def append_exact():
        cl = st["cl"]
        eq(cl.append_log_file("qemu", UUID, "vm1", VM1, "helper started"), 0,
           "AppendLogFile's return")
        wait_content(VM1, st["header"] + b"helper started")
        eq(cl.append_log_file("qemu", UUID, "vm1", VM1, " and ended\n"), 0,
           "AppendLogFile's return")
        st["header"] += b"helper started and ended\n"
        eq(read(VM1), st["header"], "file after two appends")
        # A log that no pipe opened is made by AppendLogFile itself.
        swtpm = os.path.join(Q, "vm1-swtpm.log")
        eq(cl.append_log_file("qemu", UUID, "vm1", swtpm, "swtpm_setup --tpm2"), 0,
           "AppendLogFile's return")
        eq(read(swtpm), b"swtpm_setup --tpm2", "a log AppendLogFile made")
        expect_quiet(cl, "after the calls")

    def flags_on_procs_2_to_4():
        cl = st["cl"]
        for what, fn, args in [
            ("GetLogFilePosition", cl.get_log_file_position, (VM1, 1)),
            ("GetLogFilePosition", cl.get_log_file_position, (VM1, 0x80000000)),
            ("ReadLogFile", cl.read_log_file, (VM1, *st["pos0"], 100, 1)),
            ("AppendLogFile", cl.append_log_file,
             ("qemu", UUID, "vm1", VM1, "never\n", 2)),
        ]:
            e = error_of(fn, *args)
            eq((e.code, e.domain), (c.ERR_INVALID_ARG, c.FROM_LOGGING),
               f"{what} flags={args[-1]:#x}: (code, domain) of {e!r}")
            expect(e.message.startswith("unsupported flags"),
                   f"{what}: message {e.message!r}")
        eq(read(VM1), st["header"], "the refused append wrote nothing")

    def busy_while_open():
        other = connect()
        e = error_of(open_log, other, VM1)
        expect_busy(e, VM1)
        # Also with TRUNCATE: refused, and the file is left alone.
        e = error_of(open_log, other, VM1, c.OPEN_TRUNCATE)
        expect_busy(e, VM1)
        eq(read(VM1), st["header"], "VM1 after a refused TRUNCATE open")
        # A copy of the write end keeps the pipe open.
        dup = os.dup(st["fd"])
        os.close(st["fd"])
        time.sleep(QUIET)
        e = error_of(open_log, other, VM1)
        expect_busy(e, VM1)
        st["dup"] = dup
        st["other"] = other

    def free_after_writers_close():
        os.close(st.pop("dup"))
        pos, fd = open_when_free(st["other"], VM1)
        eq(pos, (os.stat(VM1).st_ino, len(st["header"])),
           "position when reopened (flags 0 appends)")
        write_all(fd, b"second run\n")
        st["header"] += b"second run\n"
        wait_content(VM1, st["header"])
        os.close(fd)
        st["other"].close()

    def reopen_right_after_the_writer_closed():
        # libvirt opens a log again as soon as QEMU exits; the pipe's end
        # may not be read yet. Each round leaves up to 1 MiB unread when
        # the writer closes, and opens again at once: never EBUSY, and
        # every byte of every round is in the log, in order.
        p = os.path.join(Q, "reopened.log")
        cl = connect()
        want = b""
        _, fd = open_log(cl, p, name="vm5")
        for rnd in range(10):
            data = b"".join(b"round %02d line %06d ..........................\n" % (rnd, i)
                            for i in range(60000))
            write_all(fd, data)
            want += data
            os.close(fd)
            try:
                _, fd = open_log(cl, p, name="vm5")
            except c.LogManagerError as e:
                raise Failure(f"round {rnd}: reopened right after the writer closed: {e!r}")
        os.close(fd)
        eq(cl.get_log_file_position(p)[1] >= 0, True, "position")
        got = read(p + ".1") + read(p + ".0") + read(p) if os.path.exists(p + ".0") else read(p)
        expect(want.endswith(got), "the log is the tail of every round's bytes")
        cl.close()

    def truncate_removes_backups():
        vm2 = os.path.join(Q, "vm2.log")
        with open(vm2, "wb") as f:
            f.write(b"old run\n")
        for i in range(3):
            with open(f"{vm2}.{i}", "wb") as f:
                f.write(b"older run %d\n" % i)
        cl = st["cl"]
        pos, fd = open_log(cl, vm2, c.OPEN_TRUNCATE, name="vm2")
        eq(pos, (os.stat(vm2).st_ino, 0), "position after TRUNCATE")
        eq(read(vm2), b"", "vm2.log after TRUNCATE")
        for i in range(3):
            no_such(f"{vm2}.{i}", "TRUNCATE")
        write_all(fd, b"new run\n")
        wait_content(vm2, b"new run\n")
        os.close(fd)
        # And a log the daemon knows already, with its pipe closed.
        pos, fd = open_when_free(cl, VM1, c.OPEN_TRUNCATE)
        eq(pos, (os.stat(VM1).st_ino, 0), "VM1 position after TRUNCATE")
        eq(read(VM1), b"", "VM1 after TRUNCATE")
        os.close(fd)

    def flags_0_keeps_content_other_bits_refused():
        # Bits libvirt never sends are refused, as on procs 2-4, and
        # nothing is made: not even with TRUNCATE among them.
        fresh = os.path.join(Q, "never-made.log")
        for flags in (0x2 | 0x100, 0xFFFFFFFE, 0xFFFFFFFF):
            e = error_of(open_log, st["cl"], fresh, flags, "vm3")
            eq((e.code, e.domain), (c.ERR_INVALID_ARG, c.FROM_LOGGING),
               f"OpenLogFile flags={flags:#x}: (code, domain) of {e!r}")
            expect(e.message.startswith(f"unsupported flags ({flags & ~1:#x})"),
                   f"OpenLogFile: message {e.message!r}")
            expect(not os.path.exists(fresh), f"flags={flags:#x} made {fresh}")
        vm3 = os.path.join(Q, "vm3.log")
        with open(vm3, "wb") as f:
            f.write(b"previous\n")
        with open(vm3 + ".0", "wb") as f:
            f.write(b"backup\n")
        pos, fd = open_log(st["cl"], vm3, 0, name="vm3")
        eq(pos, (os.stat(vm3).st_ino, 9), "position with flags 0")
        write_all(fd, b"next\n")
        wait_content(vm3, b"previous\nnext\n")
        eq(read(vm3 + ".0"), b"backup\n", "backup kept without TRUNCATE")
        os.close(fd)

    def path_refusals():
        cl = st["cl"]
        target = os.path.join(OUTSIDE, "target.txt")
        with open(target, "wb") as f:
            f.write(b"secret\n")
        os.chmod(target, 0o644)
        link = os.path.join(Q, "link.log")
        os.symlink(target, link)
        # Directories a user below the root replaced by symlinks elsewhere:
        # a log two or more levels below the link must not follow it.
        os.makedirs(os.path.join(OUTSIDE, "sub", "deeper"), exist_ok=True)
        os.symlink(OUTSIDE, os.path.join(ROOT, "evil"))
        os.symlink(OUTSIDE, os.path.join(Q, "deep"))
        bad = [
            ("a symlinked directory two levels up", os.path.join(ROOT, "evil", "sub", "x.log"),
             os.path.join(OUTSIDE, "sub", "x.log")),
            ("a symlinked directory three levels up",
             os.path.join(Q, "deep", "sub", "deeper", "y.log"),
             os.path.join(OUTSIDE, "sub", "deeper", "y.log")),
            ("a symlinked directory right above", os.path.join(ROOT, "evil", "z.log"),
             os.path.join(OUTSIDE, "z.log")),
            ("outside the roots", os.path.join(OUTSIDE, "x.log"),
             os.path.join(OUTSIDE, "x.log")),
            ("a sibling sharing the root's prefix", ROOT + "2/x.log", ROOT + "2"),
            ("the root itself", ROOT, None),
            ("relative", "qemu/rel.log", None),
            ("relative, dot first", "./qemu/rel.log", None),
            ("with ..", os.path.join(Q, "..", "..", "outside", "dots.log"),
             os.path.join(OUTSIDE, "dots.log")),
            ("with .. staying inside", os.path.join(Q, "..", "qemu", "in.log"),
             os.path.join(Q, "in.log")),
        ]
        before = tree(ROOT), tree(OUTSIDE)
        for what, path, created in bad:
            for flags in (0, c.OPEN_TRUNCATE):
                e = error_of(open_log, cl, path, flags)
                expect(e.message, f"{what}: an error with no message")
            e = error_of(cl.append_log_file, "qemu", UUID, "vm1", path, "x\n")
            if created is not None:
                no_such(created, what)
        # A symlink as the final component is not followed.
        for flags in (0, c.OPEN_TRUNCATE):
            error_of(open_log, cl, link, flags)
        error_of(cl.append_log_file, "qemu", UUID, "vm1", link, "planted\n")
        eq(read(target), b"secret\n", "the symlink's target")
        expect(os.path.islink(link), "the planted symlink was replaced")
        eq(os.readlink(link), target, "the planted symlink")
        no_such(link + ".0", "a refused symlink")
        eq((tree(ROOT), tree(OUTSIDE)), before, "files after the refusals")
        expect_quiet(cl, "after the refusals")

    def read_maxlen():
        cl = st["cl"]
        pos = cl.get_log_file_position(VM1)
        e = error_of(cl.read_log_file, VM1, pos[0], 0, c.STRING_MAX + 1)
        expect(e.message, "no message")
        e = error_of(cl.read_log_file, VM1, pos[0], 0, 1 << 63)
        eq(cl.read_log_file(VM1, pos[0], 0, c.STRING_MAX), read(VM1),
           "ReadLogFile maxlen exactly 4 MiB")

    def position_unknown():
        never = os.path.join(Q, "never.log")
        e = error_of(st["cl"].get_log_file_position, never)
        expect(e.message and "No open log file" in e.message,
               f"message {e.message!r}")
        no_such(never, "GetLogFilePosition")
        e = error_of(st["cl"].read_log_file, never, 1, 0, 100)
        no_such(never, "ReadLogFile")

    def unknown_procedure():
        cl = st["cl"]
        for proc in (99, 0, 5, -1):
            serial = raw_call(cl, proc, b"")
            e = recv_error_frame(cl, proc, serial)
            eq((e.code, e.domain, e.message),
               (c.ERR_RPC, c.FROM_RPC, f"unknown procedure: {proc}"),
               f"proc {proc}")
        expect_quiet(cl, "after unknown procedures")

    def unknown_program():
        cl = st["cl"]
        for prog, vers in ((0x12345678, 1), (c.PROGRAM, 2)):
            serial = raw_call(cl, 2, c.x_string(VM1) + c.x_u32(0), prog=prog,
                              vers=vers)
            e = recv_error_frame(cl, 2, serial, prog=prog, vers=vers)
            eq(e.domain, c.FROM_RPC, f"domain of {e!r}")
        eq(cl.get_log_file_position(VM1)[1], len(read(VM1)),
           "a call after unknown programs")

    def undecodable_payload():
        cl = st["cl"]
        # OpenLogFile cut after its driver string.
        serial = raw_call(cl, 1, c.x_string("QEMU"))
        e = recv_error_frame(cl, 1, serial)
        expect(e.message, f"no message in {e!r}")
        # A string length running past the frame.
        serial = raw_call(cl, 2, c.x_u32(1000) + b"/var")
        recv_error_frame(cl, 2, serial)
        # AppendLogFile missing its flags.
        serial = raw_call(cl, 4, c.x_string("qemu") + c.x_domain(UUID, "vm1")
                          + c.x_string(VM1) + c.x_string("cut\n"))
        recv_error_frame(cl, 4, serial)
        eq(read(VM1), b"", "VM1 after the undecodable append")
        no_such(os.path.join(Q, "cut.log"), "undecodable")
        # The connection stays usable, serials go on.
        eq(cl.append_log_file("qemu", UUID, "vm1", VM1, "still here\n"), 0,
           "a call after undecodable payloads")
        eq(read(VM1), b"still here\n", "VM1")

    def framing_closes():
        for what, data in [
            ("length 0", c.x_u32(0)),
            ("length 4", c.x_u32(4)),
            ("length 27", c.x_u32(27) + b"\0" * 23),
            ("length 33554437", c.x_u32(33554437)),
            ("length 0xffffffff", c.x_u32(0xFFFFFFFF)),
        ]:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(SOCKET)
            s.sendall(data)
            expect_closed(s, what)
            s.close()
        # A valid call first, then a bad length: the reply, then the close.
        cl = connect()
        cl.get_log_file_position(VM1)
        cl.sock.sendall(c.x_u32(12) + b"\0" * 8)
        expect_closed(cl.sock, "a bad length after a call")
        cl.close()

    def pipelining():
        p = os.path.join(Q, "pipelined.log")
        p2 = os.path.join(Q, "pipelined-open.log")
        cl = connect()
        eq(cl.append_log_file("qemu", UUID, "vm1", p, "one"), 0, "append")
        ino = os.stat(p).st_ino
        frames = [
            c.encode_append_log_file(1, "qemu", UUID, "vm1", p, "two"),
            c.encode_open_log_file(2, "qemu", UUID, "vm1", p2, 0),
            c.encode_get_log_file_position(3, p),
            c.encode_read_log_file(4, p, ino, 0, 100),
            c.encode_frame(99, c.CALL, 5, c.OK, b""),
            c.encode_get_log_file_position(6, p, 1),
        ]
        cl.pending += [(1, 4), (2, 1), (3, 2), (4, 3), (5, 99), (6, 2)]
        cl.serial = 7
        cl.sock.sendall(b"".join(frames))
        eq(cl.recv_reply(), 0, "reply 1 (append)")
        pos, fd = cl.recv_reply()
        eq(pos, (os.stat(p2).st_ino, 0), "reply 2 (open)")
        os.close(fd)
        eq(cl.recv_reply(), (ino, 6), "reply 3 (position)")
        eq(cl.recv_reply(), b"onetwo", "reply 4 (read)")
        e = error_of(cl.recv_reply)
        eq(e.code, c.ERR_RPC, "reply 5 (unknown procedure)")
        e = error_of(cl.recv_reply)
        eq(e.code, c.ERR_INVALID_ARG, "reply 6 (flags)")
        expect_quiet(cl, "after six pipelined calls")
        cl.close()

    def connections_without_calls():
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(SOCKET)
            s.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(SOCKET)
        s.shutdown(socket.SHUT_WR)
        expect_closed(s, "a connection half-closed with no call")
        s.close()
        # An idle connection is neither spoken to nor closed.
        cl = connect()
        expect_quiet(cl, "an idle connection")
        eq(cl.get_log_file_position(VM1)[1], len(read(VM1)), "a call after idling")
        cl.close()

    def pipe_outlives_connection():
        p = os.path.join(Q, "outlive.log")
        cl = connect()
        pos, fd = open_log(cl, p, c.OPEN_TRUNCATE)
        cl.close()
        data = b"".join(b"line %05d after the connection closed\n" % i
                        for i in range(2000))
        write_all(fd, data)
        wait_content(p, data)
        cl = connect()
        eq(cl.get_log_file_position(p), (pos[0], len(data)), "position")
        # Still the daemon's: a second open is refused while it lives.
        expect_busy(error_of(open_log, cl, p), p)
        os.close(fd)
        pos2, fd2 = open_when_free(cl, p)
        eq(pos2, (pos[0], len(data)), "position on reopen")
        os.close(fd2)
        cl.close()

    def nul_cuts_read_data():
        p = os.path.join(Q, "nul.log")
        cl = connect()
        pos, fd = open_log(cl, p)
        write_all(fd, b"before\0after\n")
        eq(cl.get_log_file_position(p)[1], 13, "position")
        eq(cl.read_log_file(p, *pos, 100), b"before", "data (a C string)")
        os.close(fd)
        cl.close()

    def daemon_still_serves():
        st["cl"].close()
        cl = connect()
        eq(cl.get_log_file_position(VM1)[1], len(read(VM1)), "position")
        cl.close()

    run([
        ("OpenLogFile: REPLY_WITH_FDS, Position, one pipe FD after the reply", open_vm1),
        ("bytes written into the FD reach ROOT/qemu/vm1.log", pipe_reaches_file),
        ("GetLogFilePosition drains the pipe first", position_after_header),
        ("ReadLogFile from the open position returns what was written", read_from_open_position),
        ("AppendLogFile appends exactly the bytes and returns 0", append_exact),
        ("non-zero flags on procs 2-4: INVALID_ARG 'unsupported flags'", flags_on_procs_2_to_4),
        ("second OpenLogFile while the pipe is open: EBUSY", busy_while_open),
        ("OpenLogFile succeeds once every writer closed", free_after_writers_close),
        ("OpenLogFile right after the writer closed: no EBUSY", reopen_right_after_the_writer_closed),
        ("OpenLogFile TRUNCATE empties the file and removes backups", truncate_removes_backups),
        ("OpenLogFile flags 0 appends; bits other than TRUNCATE refused, nothing made", flags_0_keeps_content_other_bits_refused),
        ("paths outside roots, relative, with .., symlinks: refused, nothing made", path_refusals),
        ("ReadLogFile maxlen over 4 MiB: error", read_maxlen),
        ("GetLogFilePosition of an unknown path: 'No open log file'", position_unknown),
        ("unknown procedure: RPC/RPC 'unknown procedure: N'", unknown_procedure),
        ("unknown program or version: error reply", unknown_program),
        ("undecodable payload: error reply, connection usable", undecodable_payload),
        ("bad length word: closed with no reply", framing_closes),
        ("pipelined calls: replies in order, serials matching", pipelining),
        ("connections with no call; idle connections get nothing", connections_without_calls),
        ("a pipe outlives its connection", pipe_outlives_connection),
        ("ReadLogFile data ends at a NUL", nul_cuts_read_data),
        ("the daemon still serves", daemon_still_serves),
    ])


# --- rotation ------------------------------------------------------------------

def rotation_checks():
    Q = os.path.join(ROOT, "qemu")
    BIG = os.path.join(Q, "big.log")
    CAP = 4096
    st = {}

    def write_20k():
        cl = connect()
        st["cl"] = cl
        _, fd = open_log(cl, BIG)
        data = b"".join(b"serial console line %06d of the guest\n" % i
                        for i in range(520))
        expect(len(data) >= 20 * 1024, f"only {len(data)} bytes")
        st["data"] = data
        write_all(fd, data)
        pos = cl.get_log_file_position(BIG)
        eq(pos[0], os.stat(BIG).st_ino, "position's inode is the current file")
        eq(pos[1], os.path.getsize(BIG), "position's offset is the current size")
        os.close(fd)

    def files():
        size = os.path.getsize(BIG)
        expect(size <= CAP, f"{BIG} is {size} bytes, over {CAP}")
        for i in (0, 1):
            s = os.path.getsize(f"{BIG}.{i}")
            expect(0 < s <= CAP, f"{BIG}.{i} is {s} bytes")
        no_such(BIG + ".2", "max-backups = 2")
        eq(sorted(os.listdir(Q)), ["big.log", "big.log.0", "big.log.1"],
           "files in ROOT/qemu")

    def kept_is_the_tail():
        kept = read(BIG + ".1") + read(BIG + ".0") + read(BIG)
        expect(st["data"].endswith(kept),
               f"the {len(kept)} bytes kept are not the tail of what was written")

    def append_made_log_has_the_policy():
        p = os.path.join(Q, "helper.log")
        cl = st["cl"]
        for i in range(3):
            eq(cl.append_log_file("qemu", UUID, "vm1", p, b"%d" % i * 3000), 0,
               "append")
        expect(os.path.getsize(p) <= CAP, f"{p} is over {CAP} bytes")
        expect(os.path.exists(p + ".0"), f"{p} never rotated")
        no_such(p + ".2", "max-backups = 2")
        cl.close()

    def reads_ending_mid_line_near_the_cap():
        # 70-byte lines, each written in two parts with the first part
        # read by the daemon before the second is sent: a read then ends
        # mid-line, and for the line that crosses the cap, just below it.
        p = os.path.join(Q, "midline.log")
        cl = connect()
        _, fd = open_log(cl, p)
        lines = [b"line %05d of seventy bytes, sent in two writes a read apart ........\n"
                 % i for i in range(150)]
        expect(all(len(l) == 70 for l in lines), "70-byte lines")
        for line in lines:
            for part in (line[:30], line[30:]):
                write_all(fd, part)
                # Answered once the daemon has read the pipe dry.
                cl.get_log_file_position(p)
        os.close(fd)
        cl.close()
        for f in (p + ".1", p + ".0"):
            data = read(f)
            expect(data.endswith(b"\n"), f"{f} does not end at a line end: {data[-40:]!r}")
        kept = read(p + ".1") + read(p + ".0") + read(p)
        expect(b"".join(lines).endswith(kept), "what is kept is the tail of what was written")
        for l in kept.split(b"\n")[1:-1]:
            eq(len(l), 69, f"a line cut in two: {l!r}")

    run([
        ("20 KB through a pipe, cap 4096", write_20k),
        ("PATH <= cap, PATH.0 and PATH.1, no PATH.2", files),
        ("the files kept hold the tail of the stream, in order", kept_is_the_tail),
        ("a log AppendLogFile makes rotates at the cap too", append_made_log_has_the_policy),
        ("reads that end mid-line below the cap never split a line", reads_ending_mid_line_near_the_cap),
    ])


# --- one pipe per log, under concurrency ---------------------------------------

def exclusive_checks():
    Q = os.path.join(ROOT, "qemu")
    ROUNDS, PEERS = 60, 8

    def one_winner():
        # PEERS connections ask for the same fresh path at once (libvirt's
        # EBUSY guards a log against a second writer, e.g. an old QEMU):
        # exactly one gets a pipe, every other one EBUSY.
        for rnd in range(ROUNDS):
            path = os.path.join(Q, f"race{rnd}.log")
            flags = c.OPEN_TRUNCATE if rnd % 2 else 0
            peers = [connect() for _ in range(PEERS)]
            frame = c.encode_open_log_file(0, "QEMU", UUID, "vm1", path, flags)
            for p in peers:
                p.pending.append((0, c.PROC_OPEN_LOG_FILE))
                p.serial = 1
            for p in peers:
                p.sock.sendall(frame)
            fds = []
            for p in peers:
                try:
                    fds.append(p.recv_reply()[1])
                except c.LogManagerError as e:
                    expect_busy(e, path)
                p.close()
            for fd in fds:
                os.close(fd)
            eq(len(fds), 1, f"round {rnd} (flags {flags}): pipes handed out "
               f"for one path by {PEERS} concurrent OpenLogFile calls")

    run([("concurrent OpenLogFile of one path: one pipe, the rest EBUSY", one_winner)])


# --- files removed behind the daemon's back --------------------------------------

def unlinked_checks():
    Q = os.path.join(ROOT, "qemu")
    VM = os.path.join(Q, "vm-removed.log")
    st = {}

    def first_run():
        cl = connect()
        st["cl"] = cl
        _, fd = open_log(cl, VM)
        write_all(fd, b"first run\n")
        eq(cl.get_log_file_position(VM)[1], 10, "position")
        os.close(fd)  # QEMU exits

    def open_after_remove_logs():
        # virsh destroy --remove-logs / undefine: libvirt unlinks NAME.log
        # and NAME.log.N itself. The next start's OpenLogFile must make a
        # new NAME.log (virtlogd opens the path anew on every call).
        os.unlink(VM)
        pos, fd = open_when_free(st["cl"], VM)
        expect(os.path.exists(VM), f"OpenLogFile succeeded at {pos} but "
               f"{VM} was not created again (the daemon writes a deleted file)")
        eq(pos, (os.stat(VM).st_ino, 0), "position in the new file")
        write_all(fd, b"second run\n")
        wait_content(VM, b"second run\n")
        os.close(fd)

    def append_after_remove():
        # libvirt's "shutting down" AppendLogFile after an admin's rm.
        os.unlink(VM)
        eq(st["cl"].append_log_file("qemu", UUID, "vm1", VM, "shutting down\n"), 0,
           "AppendLogFile's return")
        expect(os.path.exists(VM), f"AppendLogFile returned 0 but {VM} was "
               "not created again")
        eq(read(VM), b"shutting down\n", VM)

    run([
        ("a first run writes the log", first_run),
        ("OpenLogFile after the log was unlinked makes it again", open_after_remove_logs),
        ("AppendLogFile after the log was unlinked makes it again", append_after_remove),
    ])


def recreated_checks():
    D = os.path.join(ROOT, "dbus")
    os.makedirs(D, exist_ok=True)

    def dir_recreated():
        cl = connect()
        a = os.path.join(D, "vm1-dbus.log")
        eq(cl.append_log_file("qemu", UUID, "vm1", a, "first\n"), 0, "append")
        # The directory goes and comes back (a cleanup, a tmpfs remounted).
        shutil.rmtree(D)
        os.mkdir(D)
        b = os.path.join(D, "vm2-dbus.log")
        try:
            cl.append_log_file("qemu", UUID, "vm2", b, "new log\n")
        except c.LogManagerError as e:
            raise Failure(f"a new log in the recreated {D}: {e.message!r}")
        eq(read(b), b"new log\n", b)
        pos, fd = open_when_free(cl, a)
        write_all(fd, b"again\n")
        wait_content(a, b"again\n")
        os.close(fd)

    run([("logs in a directory that was removed and made again", dir_recreated)])


# --- a non-root caller ----------------------------------------------------------

def nonroot_checks():
    P = os.path.join(ROOT, "qemu", "nobody.log")

    def not_root():
        expect(os.getuid() != 0, "run as uid 0; this mode needs another uid")

    def dropped_with_no_reply():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(DEADLINE)
        s.connect(SOCKET)  # reachable: the test made the socket 0666
        try:
            s.sendall(c.encode_open_log_file(0, "QEMU", UUID, "vm1", P, 0)
                      + c.encode_append_log_file(1, "qemu", UUID, "vm1", P, "x\n"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # dropped before the call went out: the same outcome
        expect_closed(s, f"uid {os.getuid()}")
        s.close()

    def no_call():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(DEADLINE)
        s.connect(SOCKET)
        expect_closed(s, f"uid {os.getuid()} with no call")
        s.close()

    run([
        ("running as a uid other than 0", not_root),
        ("a call from a non-root peer: dropped with no reply", dropped_with_no_reply),
        ("a non-root peer that sends nothing is dropped too", no_call),
    ])


if __name__ == "__main__":
    modes = {"main": main_checks, "rotation": rotation_checks,
             "nonroot": nonroot_checks, "exclusive": exclusive_checks,
             "unlinked": unlinked_checks, "recreated": recreated_checks}
    if len(sys.argv) != 4 or sys.argv[1] not in modes:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    SOCKET, ROOT = sys.argv[2], sys.argv[3].rstrip("/")
    modes[sys.argv[1]]()
