"""Live migration as guestlogd's logs see it, driven the way libvirt and
its hook drive a log daemon: libvirt's log protocol through the
independent client in client.py, and the hook's varlink calls
(ExpectMigration, EndMigration) and a follower (Follow) through systemd's
varlinkctl. Standard library only.

Usage:
    migration.py single VARLINKCTL SOCKET VARLINK ROOT PID
        one host: a domain leaves, comes back (across a re-exec of the
        daemon, PID, between its arrival and its first byte), fails to
        leave, starts afresh
    migration.py shared VARLINKCTL SOCKET_A VARLINK_A SOCKET_B VARLINK_B ROOT
        two daemons, one log directory (a shared instance directory):
        the domain moves from A to B while A still writes the file
        ([libvirt] max-size = 4096, max-backups = 9 on both)

ROOT is the [libvirt] root of every daemon; ROOT/qemu exists. Checks are
numbered, as in protocol.py; the first failure prints "FAIL <n> <what>:
<why>" and exits 1. Nothing asserts on time.
"""

import json
import os
import select
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client as c  # noqa: E402
from protocol import (DEADLINE, Failure, eq, expect, poll, read, run,  # noqa: E402
                      wait_content, write_all)

UUID = "0a1b2c3d-4e5f-4061-8272-8394a5b6c7d8"
NAME = "mig1"
DOMAIN = bytes.fromhex(UUID.replace("-", ""))
OUT = b"[guestlogd: domain mig1 migrated out]\n"
IN = b"[guestlogd: domain mig1 migrated in]\n"


def ticks(first, last):
    return b"".join(b"TICK %06d up=1.00\n" % i for i in range(first, last + 1))


def varlink(address, method, params):
    """One call through varlinkctl: its reply, or ("error", name)."""
    out = subprocess.run(
        [VARLINKCTL, "call", "--json=short", f"unix:{address}",
         f"io.guestlogd.Manager.{method}", json.dumps(params)],
        capture_output=True, text=True, timeout=DEADLINE)
    if out.returncode != 0:
        return ("error", out.stderr.strip())
    return parse(out.stdout)[-1] if out.stdout.strip("\x1e\n ") else {}


def parse(text):
    """varlinkctl's replies: piped, it writes JSON-SEQ (RS, object, LF)."""
    return [json.loads(part) for part in text.replace("\x1e", "\n").splitlines()
            if part.strip()]


def follow(address, name):
    """A follower, as `guestlogctl tail -f` is, once it has its first
    reply (the log's tail): from then on it gets every write."""
    proc = subprocess.Popen(
        [VARLINKCTL, "call", "--more", "--json=short", f"unix:{address}",
         "io.guestlogd.Manager.Follow",
         json.dumps({"name": name, "replayBytes": 65536, "text": True})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    if not ready:
        proc.kill()
        raise Failure("the follower got no first reply")
    return proc, proc.stdout.readline()


def follower_end(follower):
    """What a follower got, and the `ended` of its last reply; it must end
    by itself."""
    proc, first = follower
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise Failure("the follower's stream did not end")
    eq(proc.returncode, 0, f"varlinkctl's exit status ({err.strip()})")
    replies = parse(first + out)
    expect(replies, "no reply at all")
    text = "".join(r.get("text") or "" for r in replies)
    return text, replies[-1].get("ended")


def open_log(cl, path, flags):
    pos, fd = cl.open_log_file("QEMU", DOMAIN, NAME, path, flags)
    return pos, fd


def append(cl, path, message):
    cl.append_log_file("QEMU", DOMAIN, NAME, path, message)


def single_checks():
    q = os.path.join(ROOT, "qemu")
    serial = os.path.join(q, "mig1-serial0.log")
    dlog = os.path.join(q, "mig1.log")
    st = {}

    def first_start_truncates():
        for path, text in [(serial, b"a run before\n"), (serial + ".0", b"older\n")]:
            with open(path, "wb") as f:
                f.write(text)
        cl = c.Client(SOCKET, timeout=DEADLINE)
        st["cl"] = cl
        _, st["serial"] = open_log(cl, serial, c.OPEN_TRUNCATE)
        _, st["dlog"] = open_log(cl, dlog, 0)
        eq(read(serial), b"", "the serial log of a first start")
        expect(not os.path.exists(serial + ".0"), "TRUNCATE left a backup")
        write_all(st["dlog"], b"starting up libvirt\n")
        write_all(st["serial"], b"GUEST READY\n" + ticks(1, 20))
        wait_content(serial, b"GUEST READY\n" + ticks(1, 20))

    def leaving_ends_each_log_with_migrated_out():
        st["follower"] = follow(VARLINK, serial)
        append(st["cl"], dlog, b"2026-12-07 10:00:00.000+0000: initiating migration\n")
        write_all(st["serial"], ticks(21, 22) + b"TICK 000023 up=")
        append(st["cl"], dlog, b"2026-12-07 10:00:00.600+0000: shutting down, reason=migrated\n")
        os.close(st["serial"])
        os.close(st["dlog"])
        want = b"GUEST READY\n" + ticks(1, 22) + b"TICK 000023 up=\n" + OUT
        wait_content(serial, want)
        poll(lambda: read(dlog).endswith(b"reason=migrated\n" + OUT), "the domain log's line")
        st["serial_after"] = read(serial)
        st["dlog_after"] = read(dlog)

    def follower_is_told():
        text, ended = follower_end(st["follower"])
        expect(OUT.decode() in text, f"the follower never got the line: {text!r}")
        eq(ended, "domain mig1 migrated out", "the follower's `ended`")

    def arriving_truncate_appends():
        with open(serial + ".0", "wb") as f:
            f.write(b"a backup of this host's history\n")
        eq(varlink(VARLINK, "ExpectMigration",
                   {"domain": {"uuid": UUID, "name": NAME}}), {}, "ExpectMigration")
        cl = st["cl"]
        pos, st["serial"] = open_log(cl, serial, c.OPEN_TRUNCATE)
        _, st["dlog"] = open_log(cl, dlog, 0)
        eq(read(serial), st["serial_after"], "the serial log, opened with TRUNCATE while arriving")
        eq(pos, (os.stat(serial).st_ino, len(st["serial_after"])), "the position given")
        expect(os.path.exists(serial + ".0"), "a backup was removed")
        eq(varlink(VARLINK, "EndMigration", {"domainUuid": UUID}),
           {"wasArriving": True}, "EndMigration")

    def arrival_survives_a_reexec():
        before = varlink(VARLINK, "GetStatus", {})["adoptions"]
        os.kill(PID, signal.SIGUSR1)

        def adopted():
            got = varlink(VARLINK, "GetStatus", {})
            return isinstance(got, dict) and got["adoptions"] == before + 1
        poll(adopted, "the re-executed daemon")
        # Callers' connections end at a re-exec (libvirt opens one per
        # domain operation); the pipes stay.
        st["cl"].close()
        st["cl"] = c.Client(SOCKET, timeout=DEADLINE)

    def first_byte_follows_migrated_in():
        # Nothing at the opening: on shared storage the source may still
        # write a line there.
        eq(read(serial), st["serial_after"], "the serial log before the first byte")
        write_all(st["dlog"], b"starting up libvirt again\n")
        write_all(st["serial"], ticks(40, 41))
        wait_content(serial, st["serial_after"] + IN + ticks(40, 41))
        wait_content(dlog, st["dlog_after"] + IN + b"starting up libvirt again\n")

    def failed_migration_stays():
        cl = st["cl"]
        append(cl, dlog, b"2026-12-07 10:01:00.000+0000: initiating migration\n")
        append(cl, dlog, b"2026-12-07 10:01:05.000+0000: shutting down, reason=destroyed\n")
        os.close(st["serial"])
        os.close(st["dlog"])
        # The pipes' end is in the log once a new opening gets the file.
        pos, fd = open_log(cl, serial, 0)
        os.close(fd)
        eq(read(serial), st["serial_after"] + IN + ticks(40, 41),
           "the serial log of a domain that stopped here")
        expect(not read(dlog).endswith(OUT), "the domain log says migrated out")

    def fresh_start_truncates():
        _, fd = open_log(st["cl"], serial, c.OPEN_TRUNCATE)
        eq(read(serial), b"", "the serial log of a fresh start")
        expect(not os.path.exists(serial + ".0"), "TRUNCATE left a backup")
        write_all(fd, ticks(1, 1))
        wait_content(serial, ticks(1, 1))
        os.close(fd)

    def bad_calls_change_nothing():
        for params in [{"domain": {"uuid": "not-a-uuid", "name": NAME}},
                       {"domain": {"uuid": UUID, "name": "a\nb"}},
                       {"domain": {"uuid": UUID}}]:
            got = varlink(VARLINK, "ExpectMigration", params)
            expect(isinstance(got, tuple), f"ExpectMigration({params}) succeeded")
        got = varlink(VARLINK, "EndMigration", {"domainUuid": UUID})
        eq(got, {"wasArriving": False}, "EndMigration of a domain not arriving")
        _, fd = open_log(st["cl"], serial, c.OPEN_TRUNCATE)
        eq(read(serial), b"", "TRUNCATE after refused calls")
        os.close(fd)

    run([
        ("a first start: TRUNCATE empties the serial log and its backups", first_start_truncates),
        ("leaving ('initiating migration'): each log ends with 'migrated out'",
         leaving_ends_each_log_with_migrated_out),
        ("a follower gets that line and ends, told why", follower_is_told),
        ("arriving (ExpectMigration): TRUNCATE appends and removes nothing",
         arriving_truncate_appends),
        ("a re-exec before the first byte keeps the arrival", arrival_survives_a_reexec),
        ("the first byte comes after 'migrated in', however late", first_byte_follows_migrated_in),
        ("a migration that failed ('reason=destroyed'): no 'migrated out'",
         failed_migration_stays),
        ("a fresh start truncates again", fresh_start_truncates),
        ("malformed ExpectMigration is refused and changes nothing", bad_calls_change_nothing),
    ])


def shared_checks():
    q = os.path.join(ROOT, "qemu")
    serial = os.path.join(q, "mig1-serial0.log")
    st = {}

    def all_files():
        """Every file of the log, oldest first, as one byte string."""
        names = sorted((n for n in os.listdir(q) if n.startswith("mig1-serial0.log.")),
                       key=lambda n: -int(n.rsplit(".", 1)[1]))
        return b"".join(read(os.path.join(q, n)) for n in names) + read(serial)

    def source_writes():
        st["a"] = c.Client(SOCKET_A, timeout=DEADLINE)
        _, st["fa"] = open_log(st["a"], serial, c.OPEN_TRUNCATE)
        write_all(st["fa"], ticks(1, 10))
        wait_content(serial, ticks(1, 10))

    def destination_opens_while_source_writes():
        eq(varlink(VARLINK_B, "ExpectMigration",
                   {"domain": {"uuid": UUID, "name": NAME}}), {}, "ExpectMigration on B")
        st["b"] = c.Client(SOCKET_B, timeout=DEADLINE)
        pos, st["fb"] = open_log(st["b"], serial, c.OPEN_TRUNCATE)
        eq(read(serial), ticks(1, 10), "the shared file after B's TRUNCATE")
        eq(pos[1], len(ticks(1, 10)), "B's position")
        # The source goes on, past a rotation of its own.
        write_all(st["fa"], ticks(11, 200))
        poll(lambda: all_files() == ticks(1, 200), "A's ticks 11..200")

    def source_leaves():
        append(st["a"], os.path.join(q, "mig1.log"),
               b"2026-12-07 10:00:00.000+0000: initiating migration\n")
        os.close(st["fa"])
        poll(lambda: all_files() == ticks(1, 200) + OUT, "A's 'migrated out'")

    def destination_continues_the_file():
        write_all(st["fb"], ticks(201, 400))
        want = ticks(1, 200) + OUT + IN + ticks(201, 400)
        try:
            poll(lambda: all_files() == want, "B's ticks after A's")
        except Failure:
            raise Failure(f"the files hold {all_files()[-300:]!r}")
        for n in os.listdir(q):
            size = os.path.getsize(os.path.join(q, n))
            expect(size <= 4096, f"{n} is {size} bytes, over the cap of 4096")
        os.close(st["fb"])

    run([
        ("A (the source) writes the shared file", source_writes),
        ("B arrives: its TRUNCATE keeps A's file, which A goes on writing",
         destination_opens_while_source_writes),
        ("A's pipe ends after 'initiating migration': 'migrated out'", source_leaves),
        ("B's first byte follows A's last, after 'migrated in'; no file over its cap",
         destination_continues_the_file),
    ])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["single"] and len(args) == 6:
        VARLINKCTL, SOCKET, VARLINK, ROOT, PID = args[1:]
        PID = int(PID)
        single_checks()
    elif args[:1] == ["shared"] and len(args) == 7:
        VARLINKCTL, SOCKET_A, VARLINK_A, SOCKET_B, VARLINK_B, ROOT = args[1:]
        shared_checks()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
