"""A client of libvirt's log manager protocol (what libvirtd speaks to
virtlogd), for protocol tests against guestlogd or a real virtlogd.

Written from libvirt's XDR definitions (src/rpc/virnetprotocol.x,
src/logging/log_protocol.x), not from guestlogd's Rust codec, so that the two
can check each other. Standard library only (struct, socket).

It receives the way libvirt's client does: exactly `length` bytes with plain
recv(), then, for REPLY_WITH_FDS, one recvmsg() per FD with a 1-byte buffer
and room for one FD. A server that attaches the FD to the reply bytes, or
sends several FDs in one message, fails here as it fails libvirt.

Usage:
    with Client("/run/libvirt/virtlogd-sock") as c:
        pos, fd = c.open_log_file("qemu", uuid, "vm1", "/var/log/x.log")
        # pipelining:
        s1 = c.send_get_log_file_position("/var/log/x.log")
        s2 = c.send_append_log_file("qemu", uuid, "vm1", "/var/log/x.log", "hi\\n")
        r1, r2 = c.recv_reply(), c.recv_reply()   # in the order sent
"""

import array
import socket
import struct

PROGRAM = 0x87539319
VERSION = 1

PROC_OPEN_LOG_FILE = 1
PROC_GET_LOG_FILE_POSITION = 2
PROC_READ_LOG_FILE = 3
PROC_APPEND_LOG_FILE = 4

CALL, REPLY, MESSAGE, STREAM, CALL_WITH_FDS, REPLY_WITH_FDS = 0, 1, 2, 3, 4, 5
OK, ERROR, CONTINUE = 0, 1, 2

OPEN_TRUNCATE = 1

STRING_MAX = 4194304
MESSAGE_MAX = 33554432  # header + payload, without the length word
NUM_FDS_MAX = 32

# virerror.h
FROM_RPC = 7
FROM_LOGGING = 63
ERR_INTERNAL_ERROR = 1
ERR_INVALID_ARG = 8
ERR_OPERATION_DENIED = 29
ERR_SYSTEM_ERROR = 38
ERR_RPC = 39


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, wrong serial, ...)."""


class LogManagerError(Exception):
    """An error reply: the fields of virNetMessageError."""

    def __init__(self, code, domain, message, level=2, str1=None, str2=None,
                 str3=None, int1=-1, int2=-1):
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message
        self.level = level
        self.str1, self.str2, self.str3 = str1, str2, str3
        self.int1, self.int2 = int1, int2

    def __repr__(self):
        return (f"LogManagerError(code={self.code}, domain={self.domain}, "
                f"message={self.message!r})")


# --- XDR -------------------------------------------------------------------

def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def x_u32(v):
    return struct.pack(">I", v)


def x_i32(v):
    return struct.pack(">i", v)


def x_u64(v):
    return struct.pack(">Q", v)


def x_opaque(data):
    """Fixed-length opaque: the bytes, zero-padded to 4, no length."""
    return data + b"\0" * (-len(data) % 4)


def x_string(s):
    data = _b(s)
    if len(data) > STRING_MAX:
        raise ValueError(f"string of {len(data)} bytes, the most is {STRING_MAX}")
    return x_u32(len(data)) + x_opaque(data)


def x_domain(uuid, name):
    # virLogManagerProtocolDomain { opaque uuid[16]; string name; }
    uuid = _b(uuid)
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    return uuid + x_string(name)


def x_position(inode, offset):
    return x_u64(inode) + x_u64(offset)


class Unpacker:
    """Reads XDR from a bytes object; raises ProtocolError when short."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProtocolError(f"payload truncated at byte {self.pos}, need {n}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def string(self):
        n = self.u32()
        if n > STRING_MAX:
            raise ProtocolError(f"string of {n} bytes")
        data = self.take(n)
        self.take(-n % 4)  # padding, unchecked as libtirpc does
        return data

    def opt_string(self):
        if self.u32() == 0:
            return None
        return self.string().decode("utf-8", "replace")


# --- frames ----------------------------------------------------------------

def encode_frame(proc, kind, serial, status, payload, nfds=None):
    """Length word, header, the nfds word for the *_WITH_FDS types, payload."""
    body = struct.pack(">IIiIIi", PROGRAM, VERSION, proc, kind, serial, status)
    if kind in (CALL_WITH_FDS, REPLY_WITH_FDS):
        body += x_u32(nfds or 0)
    body += payload
    return x_u32(len(body) + 4) + body


def encode_open_log_file(serial, driver, uuid, name, path, flags=0):
    return encode_frame(PROC_OPEN_LOG_FILE, CALL, serial, OK,
                        x_string(driver) + x_domain(uuid, name) + x_string(path)
                        + x_u32(flags))


def encode_get_log_file_position(serial, path, flags=0):
    return encode_frame(PROC_GET_LOG_FILE_POSITION, CALL, serial, OK,
                        x_string(path) + x_u32(flags))


def encode_read_log_file(serial, path, inode, offset, maxlen, flags=0):
    return encode_frame(PROC_READ_LOG_FILE, CALL, serial, OK,
                        x_string(path) + x_position(inode, offset)
                        + x_u64(maxlen) + x_u32(flags))


def encode_append_log_file(serial, driver, uuid, name, path, message, flags=0):
    return encode_frame(PROC_APPEND_LOG_FILE, CALL, serial, OK,
                        x_string(driver) + x_domain(uuid, name) + x_string(path)
                        + x_string(message) + x_u32(flags))


def encode_error_reply(proc, serial, code, domain, message, level=2, int1=-1,
                       int2=-1):
    """An error reply as virtlogd sends it (for fake servers in tests): like
    libvirt's virReportError, str1 is the format "%s" and str2 the message
    again; int1 is the errno for system errors, else -1."""
    def opt(s):
        return x_u32(0) if s is None else x_u32(1) + x_string(s)
    payload = (x_i32(code) + x_i32(domain) + opt(message) + x_i32(level)
               + x_u32(0)                       # dom: absent
               + opt("%s") + opt(message) + opt(None)
               + x_i32(int1) + x_i32(int2)
               + x_u32(0))                      # net: absent
    return encode_frame(proc, REPLY, serial, ERROR, payload)


def parse_frame(frame):
    """Splits one complete frame into (header dict, nfds, payload)."""
    if len(frame) < 28:
        raise ProtocolError(f"frame of {len(frame)} bytes")
    length, prog, vers, proc, kind, serial, status = struct.unpack(">IIIiIIi", frame[:28])
    if length != len(frame):
        raise ProtocolError(f"frame says {length} bytes, has {len(frame)}")
    header = dict(prog=prog, vers=vers, proc=proc, type=kind, serial=serial,
                  status=status)
    rest = frame[28:]
    nfds = 0
    if kind in (CALL_WITH_FDS, REPLY_WITH_FDS):
        if len(rest) < 4:
            raise ProtocolError("nfds word missing")
        nfds = struct.unpack(">I", rest[:4])[0]
        if nfds > NUM_FDS_MAX:
            raise ProtocolError(f"{nfds} FDs announced")
        rest = rest[4:]
    return header, nfds, rest


def decode_error(payload):
    u = Unpacker(payload)
    code, domain = u.i32(), u.i32()
    message = u.opt_string()
    level = u.i32()
    if u.u32():  # dom { string name; opaque uuid[16]; int id; }
        u.string(); u.take(16); u.i32()
    str1, str2, str3 = u.opt_string(), u.opt_string(), u.opt_string()
    int1, int2 = u.i32(), u.i32()
    if u.u32():  # net { string name; opaque uuid[16]; }
        u.string(); u.take(16)
    return LogManagerError(code, domain, message, level, str1, str2, str3, int1, int2)


def decode_reply(proc, payload):
    """The return value of a successful reply to `proc`."""
    u = Unpacker(payload)
    if proc in (PROC_OPEN_LOG_FILE, PROC_GET_LOG_FILE_POSITION):
        return (u.u64(), u.u64())  # (inode, offset)
    if proc == PROC_READ_LOG_FILE:
        return u.string()
    if proc == PROC_APPEND_LOG_FILE:
        return u.i32()
    raise ProtocolError(f"no reply format for procedure {proc}")


# --- the connection ----------------------------------------------------------

class Client:
    """One connection. Serials start at 0; replies come back in order."""

    def __init__(self, path=None, sock=None, timeout=10.0):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        self.sock = sock
        self.serial = 0
        self.pending = []  # [(serial, proc)] in the order sent

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, proc, encode, *args):
        serial = self.serial
        self.serial += 1
        self.sock.sendall(encode(serial, *args))
        self.pending.append((serial, proc))
        return serial

    def send_raw(self, frame, proc, serial):
        """Sends a hand-made frame and expects a reply to (proc, serial)."""
        self.sock.sendall(frame)
        self.pending.append((serial, proc))

    def send_open_log_file(self, driver, uuid, name, path, flags=0):
        return self._send(PROC_OPEN_LOG_FILE, encode_open_log_file, driver, uuid,
                          name, path, flags)

    def send_get_log_file_position(self, path, flags=0):
        return self._send(PROC_GET_LOG_FILE_POSITION, encode_get_log_file_position,
                          path, flags)

    def send_read_log_file(self, path, inode, offset, maxlen, flags=0):
        return self._send(PROC_READ_LOG_FILE, encode_read_log_file, path, inode,
                          offset, maxlen, flags)

    def send_append_log_file(self, driver, uuid, name, path, message, flags=0):
        return self._send(PROC_APPEND_LOG_FILE, encode_append_log_file, driver,
                          uuid, name, path, message, flags)

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ProtocolError(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def _recv_fd(self):
        """One FD, as libvirt's virNetSocketRecvFD takes it: a 1-byte
        message carrying one SCM_RIGHTS int."""
        fds = array.array("i")
        data, ancdata, flags, _ = self.sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        if not data:
            raise ProtocolError("EOF while waiting for an FD")
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                socket.close(fd)
            raise ProtocolError("FD message truncated (more than one FD?)")
        if len(fds) != 1:
            for fd in fds:
                socket.close(fd)
            raise ProtocolError(f"{len(fds)} FDs in one message, expected 1")
        return fds[0]

    def recv_frame(self):
        """One raw frame and the FDs after it: (header, payload, fds)."""
        length = struct.unpack(">I", self._recv_exact(4))[0]
        if length < 28 or length > MESSAGE_MAX + 4:
            raise ProtocolError(f"bad frame length {length}")
        frame = struct.pack(">I", length) + self._recv_exact(length - 4)
        header, nfds, payload = parse_frame(frame)
        fds = [self._recv_fd() for _ in range(nfds)]
        return header, payload, fds

    def recv_reply(self):
        """The reply to the oldest pending call: its return value, or
        (return value, fd) for OpenLogFile. Raises LogManagerError for an
        error reply, ProtocolError for anything libvirt's client rejects."""
        if not self.pending:
            raise ProtocolError("no call pending")
        serial, proc = self.pending.pop(0)
        header, payload, fds = self.recv_frame()
        try:
            if header["type"] == MESSAGE:
                raise ProtocolError("unsolicited message (libvirt drops the connection)")
            if header["type"] not in (REPLY, REPLY_WITH_FDS):
                raise ProtocolError(f"message type {header['type']} is not a reply")
            if (header["prog"], header["vers"], header["proc"], header["serial"]) != \
                    (PROGRAM, VERSION, proc, serial):
                raise ProtocolError(f"reply {header} does not match call "
                                    f"proc={proc} serial={serial}")
            if header["status"] == ERROR:
                raise decode_error(payload)
            if header["status"] != OK:
                raise ProtocolError(f"reply status {header['status']}")
            value = decode_reply(proc, payload)
        except BaseException:
            for fd in fds:
                socket.close(fd)
            raise
        if proc == PROC_OPEN_LOG_FILE:
            if len(fds) != 1:
                for fd in fds:
                    socket.close(fd)
                raise ProtocolError(f"OpenLogFile reply with {len(fds)} FDs")
            return value, fds[0]
        if fds:
            for fd in fds:
                socket.close(fd)
            raise ProtocolError(f"unexpected {len(fds)} FDs")
        return value

    # Call and wait, one at a time.
    def open_log_file(self, driver, uuid, name, path, flags=0):
        """((inode, offset), write end of the pipe)."""
        self.send_open_log_file(driver, uuid, name, path, flags)
        return self.recv_reply()

    def get_log_file_position(self, path, flags=0):
        self.send_get_log_file_position(path, flags)
        return self.recv_reply()

    def read_log_file(self, path, inode, offset, maxlen, flags=0):
        self.send_read_log_file(path, inode, offset, maxlen, flags)
        return self.recv_reply()

    def append_log_file(self, driver, uuid, name, path, message, flags=0):
        self.send_append_log_file(driver, uuid, name, path, message, flags)
        return self.recv_reply()
