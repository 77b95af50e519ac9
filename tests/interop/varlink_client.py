#!/usr/bin/env python3
"""Drives guestlogd with the `varlink` package (python-varlink), which
fetches and parses the interface description and checks every reply
against it, and which cannot receive FDs.

Usage: varlink_client.py ADDRESS SCENARIO...
Scenarios: basic, openpipe. Prints every failed check and exits 1 if there
was one; exits 0 and prints "ok SCENARIO" for each that passed.
"""

import base64
import os
import sys
import time

import varlink

IFACE = "io.guestlogd.Manager"
IDL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                   "interfaces", f"{IFACE}.varlink")
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}", flush=True)
    return cond


def expect_error(call, want_error, want_params, label):
    try:
        out = call()
    except varlink.VarlinkError as e:
        if check(e.error() == want_error, f"{label}: raised {e.error()!r}, want {want_error}"):
            params = e.parameters() or {}
            for k, v in want_params.items():
                check(params.get(k) == v, f"{label}: parameter {k} is {params.get(k)!r}, want {v!r}")
        return
    check(False, f"{label}: returned {out!r}, want {want_error}")


def log_info(m, name):
    return next((l for l in m.ListLogs()["logs"] if l["name"] == name), None)


def scenario_basic(address):
    with varlink.Client(address=address) as c:
        # GetInfo, through the client's own org.varlink.service definition.
        interfaces = c.get_interfaces()
        check(IFACE in interfaces, f"GetInfo interfaces {interfaces!r}")
        check("org.varlink.service" in interfaces, f"GetInfo interfaces {interfaces!r}")
        info = c.info
        for key in ("vendor", "product", "version", "url"):
            check(isinstance(info.get(key), str), f"GetInfo {key} is {info.get(key)!r}")

        # The served description parses, and is the interface file verbatim.
        iface = c.get_interface(IFACE)
        check(iface.name == IFACE, f"parsed interface name {iface.name!r}")
        methods = {"OpenPipe", "Rotate", "ListLogs", "ReadLog", "AppendLog"}
        check(methods <= set(iface.members), f"parsed members {sorted(iface.members)!r}")
        with c.open("org.varlink.service", namespaced=False) as svc:
            desc = svc.GetInterfaceDescription(IFACE)["description"]
            with open(IDL, encoding="utf-8") as f:
                check(desc == f.read(), "GetInterfaceDescription differs from the interface file")
            expect_error(lambda: svc.GetInterfaceDescription("io.example.Nope"),
                         "org.varlink.service.InterfaceNotFound",
                         {"interface": "io.example.Nope"}, "GetInterfaceDescription(io.example.Nope)")

        with c.open(IFACE, namespaced=False) as m:
            check(m.ListLogs() == {"logs": [], "consoles": []}, "ListLogs on a new daemon is not empty")

            m.AppendLog("vm1", "first line")
            m.AppendLog(name="vm1", message="second line\n")
            expected = b"first line\nsecond line\n"
            out = m.ReadLog("vm1", None, None, True)
            check(base64.b64decode(out["data"]) == expected, f"ReadLog data {out['data']!r}")
            check(out["text"] == expected.decode(), f"ReadLog text {out['text']!r}")
            check(out["eof"] is True and out["skipped"] is False, f"ReadLog {out!r}")

            # Errors raise VarlinkError with the error's name and parameters;
            # the same connection goes on working after each.
            expect_error(lambda: m.Rotate("nosuch"), f"{IFACE}.NoSuchLog",
                         {"name": "nosuch"}, "Rotate(nosuch)")
            expect_error(lambda: m.ReadLog(name="nosuch"), f"{IFACE}.NoSuchLog",
                         {"name": "nosuch"}, "ReadLog(nosuch)")
            expect_error(lambda: m.AppendLog("../x", "m"), f"{IFACE}.InvalidName",
                         {"name": "../x"}, "AppendLog(../x)")
            expect_error(lambda: m.ReadLog(name="vm1", maxBytes=0), f"{IFACE}.InvalidParameter",
                         {"parameter": "maxBytes"}, "ReadLog(maxBytes=0)")

            m.Rotate("vm1")
            info = log_info(m, "vm1")
            check(info is not None and info["backups"] == 1 and info["rotations"] == 1
                  and info["size"] == 0 and info["bytesWritten"] == len(expected),
                  f"after Rotate: {info!r}")
            check(os.path.exists(info["path"] + ".0"), "Rotate left no NAME.log.0")
            # ReadLog from null reads the backup.
            out = m.ReadLog(name="vm1", maxBytes=65536)
            check(base64.b64decode(out["data"]) == expected, f"ReadLog after Rotate {out!r}")


def scenario_openpipe(address):
    name = "vm1"
    with varlink.Client(address=address) as c:
        with c.open(IFACE, namespaced=False) as m:
            # The reply carries the pipe's write end, which this client's
            # recv() cannot take: the kernel closes it, so the pipe ends.
            out = m.OpenPipe(name)
            check(out["fileDescriptor"] == 0, f"OpenPipe {out!r}")
            check(out["path"].endswith(f"/{name}.log"), f"OpenPipe path {out['path']!r}")
            deadline = time.monotonic() + 10
            info = log_info(m, name)
            while (info is None or info["pipes"] != 0) and time.monotonic() < deadline:
                time.sleep(0.05)
                info = log_info(m, name)
            check(info is not None and info["pipes"] == 0,
                  f"the discarded pipe is still open: {info!r}")
            check(info is not None and info["bytesWritten"] == 0, f"bytes from nowhere: {info!r}")

            # The same connection, and the log, still work.
            m.AppendLog(name, "after")
            out = m.ReadLog(name=name)
            check(base64.b64decode(out["data"]) == b"after\n", f"ReadLog {out!r}")

        # And so does a new connection, after several more discarded pipes.
        with c.open(IFACE, namespaced=False) as m:
            for _ in range(5):
                m.OpenPipe(name)
            deadline = time.monotonic() + 10
            info = log_info(m, name)
            while info["pipes"] != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                info = log_info(m, name)
            check(info["pipes"] == 0, f"discarded pipes still open: {info!r}")


SCENARIOS = {"basic": scenario_basic, "openpipe": scenario_openpipe}


def main(address, names):
    for name in names:
        before = len(FAILURES)
        try:
            SCENARIOS[name](address)
        except Exception as e:  # noqa: BLE001
            check(False, f"{name}: {type(e).__name__}: {e}")
        if len(FAILURES) == before:
            print(f"ok {name}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or any(n not in SCENARIOS for n in sys.argv[2:]):
        sys.exit(f"usage: {sys.argv[0]} ADDRESS {{{','.join(SCENARIOS)}}}...")
    main(sys.argv[1], sys.argv[2:])
    sys.exit(1 if FAILURES else 0)
