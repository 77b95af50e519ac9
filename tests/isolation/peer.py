"""A hostile or merely broken varlink peer, for tests/isolation.rs.

Run as any uid (the tests use setpriv to run it as nobody); stdlib only.

  peer.py pipeline SOCK N JSON HOLD   send N copies of the call JSON, never
                                      read, hold the connection HOLD seconds
  peer.py half SOCK COUNT BYTES HOLD  open COUNT connections that each send
                                      BYTES bytes of a message and wait
  peer.py fds SOCK N                  send half a message with N FDs
  peer.py flood SOCK N JSON           send N copies in one write, as fast
                                      as the socket takes them
  peer.py idle SOCK COUNT HOLD        open COUNT connections that send
                                      nothing, and hold them HOLD seconds

Each prints one JSON line saying what the daemon did: for every connection,
"closed" (EOF, with the seconds it took), "refused" (with the reply) or
"open" (still open when HOLD ran out).
"""

import array
import json
import os
import select
import socket
import sys
import time


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def fate(s, start, hold):
    """What became of a connection within HOLD seconds."""
    s.settimeout(max(hold - (time.monotonic() - start), 0.01))
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        return {"state": "open"}
    except ConnectionResetError:
        pass
    after = round(time.monotonic() - start, 2)
    if got:
        return {"state": "refused", "reply": got.split(b"\0")[0].decode(), "after": after}
    return {"state": "closed", "after": after}


def send_some(s, data, hold):
    """Sends what the socket takes within HOLD seconds, without reading."""
    s.setblocking(False)
    sent, start = 0, time.monotonic()
    while sent < len(data) and time.monotonic() - start < hold:
        try:
            sent += s.send(data[sent : sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "pipeline":
        n, call, hold = int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        s = connect(path)
        start = time.monotonic()
        sent = send_some(s, (call.encode() + b"\0") * n, hold)
        # Still never reading: wait for the daemon to give up on us. Its
        # replies stay queued here, so EOF cannot be read; POLLRDHUP says
        # the other end closed all the same.
        out = {"sent": sent}
        p = select.poll()
        p.register(s, select.POLLRDHUP)
        left = hold - (time.monotonic() - start)
        if left > 0 and p.poll(left * 1000):
            out["closedAfter"] = round(time.monotonic() - start, 2)
        print(json.dumps(out))
    elif mode == "half":
        count, size, hold = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        start = time.monotonic()
        conns = []
        for _ in range(count):
            s = connect(path)
            try:
                s.sendall(b'{"method":"io.guestlogd.Manager.ListLogs"'.ljust(size, b" ")[:size])
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed already; fate() reads the refusal
            conns.append(s)
        print(json.dumps([fate(s, start, hold) for s in conns]))
    elif mode == "fds":
        n = int(sys.argv[3])
        s = connect(path)
        fd = os.open("/dev/null", os.O_RDONLY)
        sent = 0
        start = time.monotonic()
        try:
            while sent < n:
                batch = min(200, n - sent)
                rights = array.array("i", [fd] * batch).tobytes()
                s.sendmsg([b"{"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                sent += batch
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = fate(s, start, 10)
        out["sent"] = sent
        print(json.dumps(out))
    elif mode == "flood":
        n, call = int(sys.argv[3]), sys.argv[4]
        s = connect(path)
        sent = send_some(s, (call.encode() + b"\0") * n, 30)
        out = fate(s, time.monotonic(), 10)
        out["sent"] = sent
        print(json.dumps(out))
    elif mode == "idle":
        count, hold = int(sys.argv[3]), float(sys.argv[4])
        start = time.monotonic()
        conns = [connect(path) for _ in range(count)]
        print(json.dumps([fate(s, start, hold) for s in conns]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
