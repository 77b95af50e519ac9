#!/usr/bin/env python3
"""Drives guestlogd with asyncvarlink, a client that can receive FDs.

Usage: asyncvarlink_client.py SOCKET_PATH SCENARIO...
Scenarios: pipe, append, errors, nested. Prints every failed check and exits 1 if
there was one; exits 0 and prints "ok SCENARIO" for each that passed.
"""

import asyncio
import base64
import os
import sys
import time

from asyncvarlink import VarlinkClientProtocol, VarlinkMethodCall, connect_unix_varlink
from asyncvarlink.util import completing_future

IFACE = "io.guestlogd.Manager"
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}", flush=True)
    return cond


class Client:
    def __init__(self, path):
        self.path = path

    async def __aenter__(self):
        self.transport, self.proto = await connect_unix_varlink(
            VarlinkClientProtocol, self.path
        )
        return self

    async def __aexit__(self, *exc):
        self.transport.close()

    async def call(self, method, params):
        """Returns (error, parameters): error is None on success."""
        reply, _ = await asyncio.wait_for(
            self.proto.call(VarlinkMethodCall(method, params)), timeout=10
        )
        return reply.error, reply.parameters

    async def ok(self, method, params):
        error, out = await self.call(method, params)
        if error is not None:
            raise AssertionError(f"{method}({params!r}) failed: {error} {out!r}")
        return out

    async def log_info(self, name):
        logs = (await self.ok(f"{IFACE}.ListLogs", {}))["logs"]
        return next((l for l in logs if l["name"] == name), None)

    async def open_pipe(self, params):
        """OpenPipe; returns (reply parameters, a dup of the received FD)."""
        with completing_future() as done:
            reply, fds = await asyncio.wait_for(
                self.proto.call(
                    VarlinkMethodCall(f"{IFACE}.OpenPipe", params), replyfdsdone=done
                ),
                timeout=10,
            )
            if reply.error is not None:
                raise AssertionError(f"OpenPipe failed: {reply.error} {reply.parameters!r}")
            index = reply.parameters["fileDescriptor"]
            check(index == 0, f"OpenPipe fileDescriptor is {index}, not 0")
            check(fds is not None and len(fds) == 1, f"OpenPipe passed {fds!r}, not one FD")
            fd = os.dup(fds[index].fileno())
        return reply.parameters, fd

    async def read_all(self, name, position=None, max_bytes=65536):
        """ReadLog from `position` until eof; returns (bytes, replies)."""
        data = bytearray()
        replies = 0
        while True:
            out = await self.ok(
                f"{IFACE}.ReadLog",
                {"name": name, "position": position, "maxBytes": max_bytes},
            )
            replies += 1
            chunk = base64.b64decode(out["data"], validate=True)
            check(len(chunk) <= max_bytes, f"ReadLog returned {len(chunk)} > {max_bytes} bytes")
            check(out["skipped"] is False, f"ReadLog reply {replies} has skipped=true")
            check(out.get("text") is None, "ReadLog without text=true returned text")
            data += chunk
            position = out["position"]
            if out["eof"]:
                return bytes(data), replies
            if not check(chunk, "ReadLog returned no data but eof=false"):
                return bytes(data), replies


async def wait_for(client, name, pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        info = await client.log_info(name)
        if info is not None and pred(info):
            return info
        if time.monotonic() > deadline:
            check(False, f"timed out waiting for {what}; last ListLogs entry: {info!r}")
            return info
        await asyncio.sleep(0.05)


async def scenario_pipe(path):
    name = "vm1"
    # Bytes that are not text: NULs, bytes that never occur in UTF-8, a
    # truncated sequence, an overlong encoding, then random bytes.
    payload = (
        b"\x00\x00start\x00\xff\xfe\xc3\x28\xe2\x82\xc0\x80"
        + os.urandom(1024 * 1024)
        + b"\x00end\xff"
    )
    check(b"\x00" in payload, "payload lacks NUL")
    try:
        payload.decode("utf-8")
        check(False, "payload is valid UTF-8")
    except UnicodeDecodeError:
        pass

    async with Client(path) as c:
        reply, fd = await c.open_pipe({"name": name})
        check(reply["path"].endswith(f"/{name}.log"), f"OpenPipe path {reply['path']!r}")
        check(os.path.isabs(reply["path"]), f"OpenPipe path is not absolute: {reply['path']!r}")
        start = reply["position"]
        check(start["offset"] == 0, f"a new log's position is {start!r}")
        check(start["inode"] == os.stat(reply["path"]).st_ino,
              f"position.inode {start['inode']} is not the inode of {reply['path']}")
        info = await c.log_info(name)
        check(info is not None and info["pipes"] == 1, f"while the pipe is open: {info!r}")

        # The writer blocks when the pipe is full; the daemon drains it on its
        # own, so a blocking write in a thread is all that is needed.
        def write_all():
            view = memoryview(payload)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.close(fd)

        await asyncio.wait_for(asyncio.to_thread(write_all), timeout=15)

        info = await wait_for(
            c, name,
            lambda i: i["pipes"] == 0 and i["bytesWritten"] == len(payload),
            f"pipes 0 and bytesWritten {len(payload)}",
        )
        if info is not None:
            check(info["size"] == len(payload), f"size {info['size']} != {len(payload)}")
            check(info["bytesDropped"] == 0, f"bytesDropped {info['bytesDropped']}")
            check(info["rotations"] == 0, f"rotations {info['rotations']}")
            check(info["path"] == reply["path"], f"ListLogs path {info['path']!r}")

        data, replies = await c.read_all(name, None)
        check(replies >= len(payload) // 65536, f"only {replies} ReadLog replies")
        check(len(data) == len(payload), f"ReadLog from null read {len(data)} bytes, wrote {len(payload)}")
        if data != payload:
            first = next((i for i, (a, b) in enumerate(zip(data, payload)) if a != b), None)
            check(False, f"ReadLog bytes differ from what was written (first difference at {first})")

        # Reading from OpenPipe's position gives the same bytes.
        data2, _ = await c.read_all(name, start)
        check(data2 == payload, "ReadLog from OpenPipe's position differs from what was written")

        with open(reply["path"], "rb") as f:
            check(f.read() == payload, "the log file differs from what was written")

        # The connection is still good after all that.
        check(await c.log_info(name) is not None, "ListLogs lost the log")


async def scenario_append(path):
    name = "notes"
    async with Client(path) as c:
        # A new log is created by AppendLog; a newline is added.
        await c.ok(f"{IFACE}.AppendLog", {"name": name, "message": "héllo wörld"})
        # A message that ends with a newline gets none added.
        await c.ok(f"{IFACE}.AppendLog", {"name": name, "message": "second\n"})
        expected = "héllo wörld\nsecond\n".encode()
        out = await c.ok(
            f"{IFACE}.ReadLog", {"name": name, "position": None, "text": True}
        )
        check(base64.b64decode(out["data"], validate=True) == expected,
              f"ReadLog data {out['data']!r} is not {expected!r}")
        check(out["text"] == expected.decode(), f"ReadLog text {out['text']!r}")
        check(out["eof"] is True, f"ReadLog eof {out['eof']!r}")
        check(out["skipped"] is False, f"ReadLog skipped {out['skipped']!r}")
        check(out["position"]["offset"] == len(expected), f"ReadLog position {out['position']!r}")

        # text=true on invalid UTF-8 replaces it with U+FFFD; data stays exact.
        _, fd = await c.open_pipe({"name": name})
        os.write(fd, b"a\xffb\x00c")
        os.close(fd)
        await wait_for(c, name, lambda i: i["pipes"] == 0 and i["bytesWritten"] == len(expected) + 5,
                       "the pipe's 5 bytes")
        out = await c.ok(
            f"{IFACE}.ReadLog",
            {"name": name, "position": out["position"], "maxBytes": 100, "text": True},
        )
        check(base64.b64decode(out["data"]) == b"a\xffb\x00c", f"ReadLog data {out['data']!r}")
        check(out["text"] == "a\ufffdb\x00c", f"ReadLog text {out['text']!r}")
        check(out["eof"] is True, f"ReadLog eof {out['eof']!r}")

        # text=false gives a null text.
        out = await c.ok(f"{IFACE}.ReadLog", {"name": name, "text": False, "maxBytes": 3})
        check(out.get("text") is None, f"text=false returned text {out.get('text')!r}")
        check(base64.b64decode(out["data"]) == expected[:3], f"maxBytes 3 read {out['data']!r}")
        check(out["eof"] is False, "a partial read reports eof")


async def scenario_errors(path):
    async with Client(path) as c:
        await c.ok(f"{IFACE}.AppendLog", {"name": "vm1", "message": "x"})
        cases = [
            (f"{IFACE}.ReadLog", {"name": "nosuch"},
             f"{IFACE}.NoSuchLog", {"name": "nosuch"}),
            (f"{IFACE}.Rotate", {"name": "nosuch"},
             f"{IFACE}.NoSuchLog", {"name": "nosuch"}),
            (f"{IFACE}.ReadLog", {"name": 5},
             f"{IFACE}.InvalidParameter", {"parameter": "name"}),
            (f"{IFACE}.ReadLog", {},
             f"{IFACE}.InvalidParameter", {"parameter": "name"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "bogus": 1},
             f"{IFACE}.InvalidParameter", {"parameter": "bogus"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "maxBytes": 0},
             f"{IFACE}.InvalidParameter", {"parameter": "maxBytes"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "maxBytes": 65537},
             f"{IFACE}.InvalidParameter", {"parameter": "maxBytes"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "position": {"inode": "1", "offset": 0}},
             f"{IFACE}.InvalidParameter", {"parameter": "position.inode"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "position": {"inode": 1, "offset": -1}},
             f"{IFACE}.InvalidParameter", {"parameter": "position.offset"}),
            (f"{IFACE}.OpenPipe", {"name": "vm1", "maxSize": 1},
             f"{IFACE}.InvalidParameter", {"parameter": "maxSize"}),
            (f"{IFACE}.OpenPipe", {"name": "vm1", "maxBackups": 65},
             f"{IFACE}.InvalidParameter", {"parameter": "maxBackups"}),
            (f"{IFACE}.AppendLog", {"name": "vm1", "message": "x" * 65537},
             f"{IFACE}.InvalidParameter", {"parameter": "message"}),
            (f"{IFACE}.ReadLog", {"name": "../x"},
             f"{IFACE}.InvalidName", {"name": "../x"}),
            (f"{IFACE}.AppendLog", {"name": "", "message": "x"},
             f"{IFACE}.InvalidName", {"name": ""}),
            (f"{IFACE}.NoSuchMethod", {},
             "org.varlink.service.MethodNotFound", {"method": f"{IFACE}.NoSuchMethod"}),
            ("io.example.Nope.Call", {},
             "org.varlink.service.InterfaceNotFound", {"interface": "io.example.Nope"}),
        ]
        await check_errors(c, cases)
        # No failed call created a log.
        logs = (await c.ok(f"{IFACE}.ListLogs", {}))["logs"]
        names = {l["name"] for l in logs}
        check(not names & {"nosuch", "../x", ""}, f"a failed call created a log: {logs!r}")


async def scenario_nested(path):
    """Errors in a nested parameter are named with a dot, like wrong types
    in one are ("position.inode"), and an unknown nested field is refused
    like an unknown top-level one."""
    async with Client(path) as c:
        await c.ok(f"{IFACE}.AppendLog", {"name": "vm1", "message": "x"})
        await check_errors(c, [
            (f"{IFACE}.ReadLog", {"name": "vm1", "position": {"inode": 1}},
             f"{IFACE}.InvalidParameter", {"parameter": "position.offset"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "position": {"offset": 0}},
             f"{IFACE}.InvalidParameter", {"parameter": "position.inode"}),
            (f"{IFACE}.ReadLog", {"name": "vm1", "position": {"inode": 1, "offset": 0, "bogus": 1}},
             f"{IFACE}.InvalidParameter", {"parameter": "position.bogus"}),
        ])


async def check_errors(c, cases):
    """Each call must fail as given; the connection must still answer."""
    for method, params, want_error, want_params in cases:
        label = f"{method}({str(params)[:60]})"
        error, out = await c.call(method, params)
        if check(error == want_error, f"{label}: error {error!r} {out!r}, want {want_error}"):
            for k, v in want_params.items():
                check(out.get(k) == v, f"{label}: parameter {k} is {out.get(k)!r}, want {v!r}")
            if want_error.endswith((".InvalidParameter", ".InvalidName")):
                check(isinstance(out.get("reason"), str) and out["reason"],
                      f"{label}: no reason in {out!r}")
        # The same connection still answers.
        try:
            info = await c.log_info("vm1")
            check(info is not None, f"after {label}: ListLogs lost vm1")
        except Exception as e:  # noqa: BLE001
            check(False, f"after {label}: ListLogs failed: {e!r}")
            return


SCENARIOS = {
    "pipe": scenario_pipe,
    "append": scenario_append,
    "errors": scenario_errors,
    "nested": scenario_nested,
}


async def main(path, names):
    for name in names:
        before = len(FAILURES)
        try:
            await SCENARIOS[name](path)
        except Exception as e:  # noqa: BLE001
            check(False, f"{name}: {type(e).__name__}: {e}")
        if len(FAILURES) == before:
            print(f"ok {name}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or any(n not in SCENARIOS for n in sys.argv[2:]):
        sys.exit(f"usage: {sys.argv[0]} SOCKET_PATH {{{','.join(SCENARIOS)}}}...")
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
    sys.exit(1 if FAILURES else 0)
