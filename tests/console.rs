//! Consoles end to end: the real daemon, a guest on the console's guest
//! socket (QEMU, or a plain `UnixStream` standing in for it) and clients on
//! its client and view sockets.
//!
//! Every socket peer here reads on a thread of its own into a shared
//! buffer, so the tests wait for bytes to arrive (with a generous deadline
//! that only keeps a broken daemon from hanging the run) and then compare
//! them byte for byte. Nothing here asserts on timing.

mod common;
#[path = "common/qemu.rs"]
mod qemu;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::{Daemon, call, raw_call, tool};
use guestlogd::api::{ConsoleInfo, Manager as _, ManagerError, SocketOwner};
use qemu::{Boot, Qemu};
use serde_json::{Value, json};
use zlink::tokio::unix::Connection;

type Conn = Connection;

/// How long any expected event may take before the test gives up.
const WAIT: Duration = Duration::from_secs(60);
/// How long a TCG guest may take to boot (3 to 5 s when idle).
const BOOT: Duration = Duration::from_secs(180);
/// A client's queue by default (CreateConsole's slowClient).
const QUEUE: usize = 256 * 1024;

// ------------------------------------------------------------------ varlink

async fn connect(d: &Daemon) -> Conn {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

async fn create(conn: &mut Conn, parameters: Value) -> Value {
    let what = parameters.to_string();
    call(conn, "CreateConsole", parameters)
        .await
        .unwrap_or_else(|e| panic!("CreateConsole {what}: {e:?}"))
}

async fn consoles(conn: &mut Conn) -> Vec<ConsoleInfo> {
    conn.list_logs().await.unwrap().unwrap().consoles
}

async fn console(conn: &mut Conn, name: &str) -> ConsoleInfo {
    consoles(conn)
        .await
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("ListLogs has no console {name}"))
}

/// Polls ListLogs until the console satisfies `ok`.
async fn wait_console(
    conn: &mut Conn,
    name: &str,
    what: &str,
    ok: impl Fn(&ConsoleInfo) -> bool,
) -> ConsoleInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = console(conn, name).await;
        if ok(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "never {what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_from_guest(conn: &mut Conn, name: &str, bytes: usize) -> ConsoleInfo {
    wait_console(conn, name, &format!("bytesFromGuest {bytes}"), |c| {
        c.bytes_from_guest == bytes as i64
    })
    .await
}

/// The paths of a console's sockets.
struct Paths {
    guest: PathBuf,
    client: PathBuf,
    view: PathBuf,
}

fn paths(d: &Daemon, name: &str) -> Paths {
    let dir = d.dir.path().join("run/consoles");
    Paths {
        guest: dir.join(format!("{name}.guest")),
        client: dir.join(format!("{name}.client")),
        view: dir.join(format!("{name}.view")),
    }
}

// ------------------------------------------------------------ socket peers

/// Bytes a reader thread collected, and whether it saw the end.
#[derive(Default)]
struct Got {
    data: Vec<u8>,
    eof: bool,
}

/// A buffer that one thread fills and the test waits on.
#[derive(Clone, Default)]
struct Collector(Arc<(Mutex<Got>, Condvar)>);

impl Collector {
    fn push(&self, data: &[u8]) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().data.extend_from_slice(data);
        cv.notify_all();
    }

    fn end(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().eof = true;
        cv.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Got> {
        self.0.0.lock().unwrap()
    }

    fn data(&self) -> Vec<u8> {
        self.lock().data.clone()
    }

    fn len(&self) -> usize {
        self.lock().data.len()
    }

    /// Waits until `ok` holds and returns everything collected. Panics at
    /// the deadline, or at the end of the stream if `ok` still fails.
    fn wait_for(&self, what: &str, limit: Duration, mut ok: impl FnMut(&Got) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        loop {
            if ok(&g) {
                return g.data.clone();
            }
            let now = Instant::now();
            if g.eof || now >= deadline {
                panic!(
                    "{} waiting for {what}; {} bytes so far, ending in {:?}",
                    if g.eof { "EOF" } else { "timed out" },
                    g.data.len(),
                    String::from_utf8_lossy(&g.data[g.data.len().saturating_sub(600)..])
                );
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    fn wait_contains_within(&self, needle: &[u8], limit: Duration) -> Vec<u8> {
        // Scans only what is new, so long streams stay cheap.
        let mut scanned = 0;
        let what = format!("{:?}", String::from_utf8_lossy(needle));
        self.wait_for(&what, limit, |g| {
            let from = scanned.min(g.data.len()).saturating_sub(needle.len());
            scanned = g.data.len();
            find(&g.data[from..], needle).is_some()
        })
    }

    fn wait_contains(&self, needle: &[u8]) -> Vec<u8> {
        self.wait_contains_within(needle, WAIT)
    }

    fn wait_len(&self, n: usize) -> Vec<u8> {
        self.wait_for(&format!("{n} bytes"), WAIT, |g| g.data.len() >= n)
    }

    fn wait_eof(&self) -> Vec<u8> {
        self.wait_for("EOF", WAIT, |g| g.eof)
    }
}

/// One end of a console socket: a client, a viewer or a fake guest. What
/// it receives is collected by a thread; dropping it hangs up.
struct Peer {
    stream: UnixStream,
    got: Collector,
}

impl Peer {
    fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
        Self::new(s)
    }

    fn new(stream: UnixStream) -> Self {
        let got = Collector::default();
        let mut r = stream.try_clone().unwrap();
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 65536];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return g.end(),
                    Ok(n) => g.push(&buf[..n]),
                }
            }
        });
        Self { stream, got }
    }

    fn send(&self, data: &[u8]) {
        (&self.stream).write_all(data).unwrap();
    }
}

impl std::ops::Deref for Peer {
    type Target = Collector;
    fn deref(&self) -> &Collector {
        &self.got
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Also ends the reader thread, which holds the other descriptor.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// A client that attaches and then never reads, with a small receive
/// buffer: the daemon can only queue for it.
fn stalled_client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    s
}

// ----------------------------------------------------------------- helpers

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Numbered lines tagged `tag`, `bytes` long, so a loss, a repeat or a
/// mix-up shows where it happened.
fn lines(tag: &str, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    let mut i = 0;
    while out.len() < bytes {
        writeln!(out, "{tag} {i:09} {}", "x".repeat(40)).unwrap();
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// If `got` is `want` with runs of it replaced by drop markers, each naming
/// the length of the run it replaces, the bytes the markers name in all.
fn reconstruct(got: &[u8], want: &[u8]) -> Result<u64, String> {
    const START: &[u8] = b"\r\n[guestlogd: ";
    const END: &[u8] = b" bytes dropped]\r\n";
    let (mut rest, mut at, mut dropped) = (got, 0usize, 0u64);
    loop {
        let (segment, after) = match find(rest, START) {
            Some(i) => (&rest[..i], Some(&rest[i + START.len()..])),
            None => (rest, None),
        };
        if !want[at..].starts_with(segment) {
            return Err(format!(
                "at byte {at} of the stream: got {:?}, want {:?}",
                lossy(&segment[..segment.len().min(200)]),
                lossy(&want[at..(at + 200).min(want.len())])
            ));
        }
        at += segment.len();
        let Some(after) = after else {
            return if at == want.len() {
                Ok(dropped)
            } else {
                Err(format!("the stream ends at byte {at} of {}", want.len()))
            };
        };
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        let n: u64 = std::str::from_utf8(&after[..digits])
            .unwrap()
            .parse()
            .map_err(|_| format!("a malformed marker at byte {at}"))?;
        if !after[digits..].starts_with(END) {
            return Err(format!("a malformed marker at byte {at}"));
        }
        rest = &after[digits + END.len()..];
        at += n as usize;
        dropped += n;
        if at > want.len() {
            return Err(format!("a marker drops past the end, to byte {at}"));
        }
    }
}

/// Waits until `peer` got all of `want`, with drop markers in place of
/// what it missed, and returns the bytes dropped for it.
fn wait_reconstructed(peer: &Collector, want: &[u8]) -> u64 {
    // The newest output is never dropped, and its last line is unique.
    let tail = &want[want.len().saturating_sub(64)..];
    let got = peer.wait_for("the end of the expected stream", WAIT, |g| {
        g.data.ends_with(tail)
    });
    reconstruct(&got, want).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `data` as the guest in `chunk`-sized pieces, each only after
/// every reader in `readers` has received everything before it: they can
/// never fall behind, whatever their queues.
fn feed_in_step(guest: &Peer, data: &[u8], chunk: usize, readers: &[&Collector]) {
    let bases: Vec<usize> = readers.iter().map(|r| r.len()).collect();
    let mut sent = 0;
    for piece in data.chunks(chunk) {
        guest.send(piece);
        sent += piece.len();
        for (r, base) in readers.iter().zip(&bases) {
            r.wait_len(base + sent);
        }
    }
}

/// The daemon's VmRSS or VmHWM, in KiB.
fn memory(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix(" kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn skip_without(boot: Boot) -> bool {
    match qemu::unavailable(boot) {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

// -------------------------------------------------------------------- tests

/// A real guest: boot output, input, two clients and a client that never
/// reads, against the log.
#[tokio::test]
async fn real_guest_reaches_every_client_and_the_log() {
    if skip_without(Boot::Guest) {
        return;
    }
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let p = paths(&d, "vm");
    let log_path = d.log_path("vm");
    // The generated client, with every option left to its default.
    let reply = conn
        .create_console(
            "vm", None, None, None, None, None, None, None, None, None, None, None, None, None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.guest_socket, p.guest.to_str().unwrap());
    assert_eq!(reply.client_socket, p.client.to_str().unwrap());
    assert_eq!(reply.view_socket, None);
    assert_eq!(reply.log_path, Some(log_path.to_str().unwrap()));

    let a = Peer::connect(&p.client);
    let b = Peer::connect(&p.client);
    wait_console(&mut conn, "vm", "2 clients", |c| c.clients == 2).await;
    let mut vm = Qemu::start(&p.guest, Boot::Guest, None);

    for c in [&a, &b] {
        c.wait_contains_within(b"GUEST READY\r\n", BOOT);
        assert!(contains(&c.data(), b"Linux version"), "no kernel banner");
    }
    assert!(contains(&fs::read(&log_path).unwrap(), b"Linux version"));
    let info = console(&mut conn, "vm").await;
    assert!(info.guest_connected, "{info:?}");

    // Input from either client reaches /init; its answer reaches both.
    a.send(b"echo hello\n");
    for c in [&a, &b] {
        c.wait_contains(b"echo hello\r\nECHO hello\r\n");
    }
    b.send(b"echo from-b\n");
    for c in [&a, &b] {
        c.wait_contains(b"echo from-b\r\nECHO from-b\r\n");
    }
    assert_eq!(
        console(&mut conn, "vm").await.bytes_to_guest,
        "echo hello\necho from-b\n".len() as i64
    );

    // A third client attaches and never reads. The guest is idle, so the
    // log's length now is where the third client's replay ends.
    let attached_at = fs::metadata(&log_path).unwrap().len() as usize;
    let stalled = stalled_client(&p.client);
    wait_console(&mut conn, "vm", "3 clients", |c| c.clients == 3).await;

    a.send(b"count 3000\n");
    for c in [&a, &b] {
        c.wait_contains(b"COUNT DONE 3000\r\n");
    }
    // More than a queue's worth, so the stalled client must lose some.
    a.send(b"flood 600000\n");
    for c in [&a, &b] {
        c.wait_contains_within(b"FLOOD DONE\r\n", BOOT);
    }
    a.send(b"poweroff\n");
    vm.wait_exit(WAIT);
    let info = wait_console(&mut conn, "vm", "disconnected", |c| !c.guest_connected).await;

    // The log holds all of it, in order; both readers got exactly the log.
    let log = fs::read(&log_path).unwrap();
    assert_eq!(info.bytes_from_guest, log.len() as i64);
    let mut count = b"count 3000\r\n".to_vec();
    for i in 1..=3000 {
        write!(count, "SEQ {i:06}\r\n").unwrap();
    }
    count.extend_from_slice(b"COUNT DONE 3000\r\n");
    assert!(contains(&log, &count), "the log lacks count's 3000 lines");
    assert!(contains(&log, b"echo hello\r\nECHO hello\r\n"));
    for c in [&a, &b] {
        let got = c.wait_len(log.len());
        assert!(got == log, "a client's stream differs from the log");
    }

    // The stalled client, reading now, gets its replay and the output up
    // to where its queue overflowed, the marker, then the newest output.
    let stalled = Peer::new(stalled);
    let want = &log[attached_at.saturating_sub(16384)..];
    let dropped = wait_reconstructed(&stalled, want);
    assert!(dropped > 0, "the stalled client lost nothing");
    let info = console(&mut conn, "vm").await;
    assert_eq!(info.bytes_dropped_for_clients, dropped as i64);
    assert_eq!(info.clients, 3);
}

#[tokio::test]
async fn the_client_limit_refuses_with_a_line_and_frees_slots() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let mut clients: Vec<Peer> = (0..16).map(|_| Peer::connect(&p.client)).collect();
    wait_console(&mut conn, "vm", "16 clients", |c| c.clients == 16).await;

    let extra = Peer::connect(&p.client);
    assert_eq!(
        lossy(&extra.wait_eof()),
        "\r\n[guestlogd: LimitReached: 16 clients]\r\n"
    );
    guest.send(b"to all\n");
    for c in &clients {
        assert_eq!(c.wait_len(7), b"to all\n");
    }
    assert_eq!(console(&mut conn, "vm").await.clients, 16);

    // A client leaving frees its slot.
    clients.pop();
    wait_console(&mut conn, "vm", "15 clients", |c| c.clients == 15).await;
    let late = Peer::connect(&p.client);
    wait_console(&mut conn, "vm", "16 clients", |c| c.clients == 16).await;
    assert_eq!(late.wait_len(7), b"to all\n", "the replay");
    guest.send(b"again\n");
    assert_eq!(late.wait_len(13), b"to all\nagain\n");

    // The limit is configurable, and counts viewers apart from clients.
    let d = Daemon::start("[limits]\nmax-clients = 2\n");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm", "viewers": true})).await;
    let p = paths(&d, "vm");
    let _clients = [Peer::connect(&p.client), Peer::connect(&p.client)];
    let _viewers = [Peer::connect(&p.view), Peer::connect(&p.view)];
    wait_console(&mut conn, "vm", "2 and 2", |c| {
        c.clients == 2 && c.viewers == 2
    })
    .await;
    assert_eq!(
        lossy(&Peer::connect(&p.client).wait_eof()),
        "\r\n[guestlogd: LimitReached: 2 clients]\r\n"
    );
    assert_eq!(
        lossy(&Peer::connect(&p.view).wait_eof()),
        "\r\n[guestlogd: LimitReached: 2 viewers]\r\n"
    );
    let c = console(&mut conn, "vm").await;
    assert_eq!((c.clients, c.viewers), (2, 2));
}

/// A late client gets exactly the last replayBytes of output, read from
/// the log (across its rotations) or, without a log, from memory.
#[tokio::test]
async fn replay_is_exactly_the_latest_output() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    // (name, extra parameters, bytes of output, bytes a late client replays)
    let cases = [
        ("logged", json!({"replayBytes": 1000}), 3000, 1000),
        (
            "memory",
            json!({"replayBytes": 1000, "log": false}),
            3000,
            1000,
        ),
        (
            "rotated",
            json!({"replayBytes": 5000, "maxSize": 4096, "maxBackups": 2}),
            6000,
            5000,
        ),
        ("default", json!({}), 20000, 16384),
        ("short", json!({"replayBytes": 1000}), 300, 300),
        ("short-memory", json!({"log": false}), 300, 300),
        ("none", json!({"replayBytes": 0}), 3000, 0),
        (
            "none-memory",
            json!({"replayBytes": 0, "log": false}),
            3000,
            0,
        ),
    ];
    for (name, extra, total, replay) in cases {
        let mut params = extra.clone();
        params["name"] = json!(name);
        create(&mut conn, params).await;
        let p = paths(&d, name);
        let guest = Peer::connect(&p.guest);
        let early = Peer::connect(&p.client);
        wait_console(&mut conn, name, "1 client", |c| c.clients == 1).await;
        // In three writes, each taken before the next, so that the memory
        // ring sees pieces smaller and larger than itself.
        let data = lines(name, total);
        let cuts = [0, total / 10, total * 8 / 10, total];
        for w in cuts.windows(2) {
            guest.send(&data[w[0]..w[1]]);
            wait_from_guest(&mut conn, name, w[1]).await;
        }
        assert!(early.wait_len(total) == data, "{name}: the early client");

        let late = Peer::connect(&p.client);
        wait_console(&mut conn, name, "2 clients", |c| c.clients == 2).await;
        guest.send(b"live\n");
        let mut want = data[total - replay..].to_vec();
        want.extend_from_slice(b"live\n");
        let got = late.wait_len(want.len());
        assert!(
            got == want,
            "{name}: the late client got {} bytes: {:?}",
            got.len(),
            lossy(&got[..got.len().min(300)])
        );
    }
    let info = conn.list_logs().await.unwrap().unwrap();
    let rotated = info.logs.iter().find(|l| l.name == "rotated").unwrap();
    assert!(rotated.rotations > 0, "the replay did not cross a rotation");
}

/// The drop policy: a client that never reads while 20 MB go by costs a
/// bounded amount of memory, and later gets a marker naming what it lost.
#[tokio::test]
async fn a_stalled_client_costs_bounded_memory_and_gets_a_marker() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(
        &mut conn,
        json!({"name": "vm", "slowClient": "drop", "replayBytes": 0}),
    )
    .await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let stalled = stalled_client(&p.client);
    wait_console(&mut conn, "vm", "1 client", |c| {
        c.clients == 1 && c.guest_connected
    })
    .await;

    let data = lines("flood", 20 << 20);
    let before = memory(d.pid(), "VmRSS");
    guest.send(&data);
    let info = wait_from_guest(&mut conn, "vm", data.len()).await;
    let peak = memory(d.pid(), "VmHWM");
    assert!(
        peak < before + 8 * 1024,
        "the daemon's RSS went from {before} KiB to a peak of {peak} KiB"
    );
    assert!(info.bytes_dropped_for_clients > 0, "{info:?}");

    let stalled = Peer::new(stalled);
    let dropped = wait_reconstructed(&stalled, &data);
    assert!(
        dropped as usize >= data.len() - 2 * QUEUE - (4 << 20),
        "only {dropped} bytes dropped"
    );
    let info = console(&mut conn, "vm").await;
    assert_eq!(info.bytes_dropped_for_clients, dropped as i64);
    assert_eq!(info.clients, 1, "the drop policy keeps the client");
}

/// The disconnect policy: the client that falls behind is closed, the one
/// that keeps up gets everything and stays.
#[tokio::test]
async fn the_disconnect_policy_closes_only_the_slow_client() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm", "slowClient": "disconnect"})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let normal = Peer::connect(&p.client);
    let stalled = stalled_client(&p.client);
    wait_console(&mut conn, "vm", "2 clients", |c| c.clients == 2).await;

    let data = lines("out", 2 << 20);
    feed_in_step(&guest, &data, 64 * 1024, &[&normal]);
    wait_console(&mut conn, "vm", "1 client", |c| c.clients == 1).await;
    guest.send(b"still here\n");
    let mut want = data.clone();
    want.extend_from_slice(b"still here\n");
    assert!(
        normal.wait_len(want.len()) == want,
        "the normal client lost output"
    );

    let stalled = Peer::new(stalled).wait_eof();
    assert!(
        stalled.len() < data.len() && data.starts_with(&stalled),
        "the slow client got {} bytes, not a prefix of the output",
        stalled.len()
    );
    assert!(!contains(&stalled, b"[guestlogd:"));
}

/// A guest that connects again replaces the old connection; output of both
/// arrives in order and input goes to the new one.
#[tokio::test]
async fn a_reconnecting_guest_replaces_the_old_connection() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let client = Peer::connect(&p.client);
    assert!(!console(&mut conn, "vm").await.guest_connected);

    let first = Peer::connect(&p.guest);
    wait_console(&mut conn, "vm", "connected", |c| c.guest_connected).await;
    first.send(b"from the first\n");
    let second = Peer::connect(&p.guest);
    second.send(b"from the second\n");
    assert_eq!(
        lossy(&client.wait_len(31)),
        "from the first\nfrom the second\n"
    );
    first.wait_eof();
    client.send(b"input\n");
    assert_eq!(second.wait_len(6), b"input\n");
    assert!(first.data().is_empty(), "input went to the old connection");

    drop(second);
    wait_console(&mut conn, "vm", "disconnected", |c| !c.guest_connected).await;
    let third = Peer::connect(&p.guest);
    wait_console(&mut conn, "vm", "connected", |c| c.guest_connected).await;
    third.send(b"third\n");
    client.wait_len(37);
    // The client and the log get a read at once; counted once logged.
    wait_from_guest(&mut conn, "vm", 37).await;
    let log = fs::read(d.log_path("vm")).unwrap();
    assert_eq!(lossy(&log), "from the first\nfrom the second\nthird\n");
    let c = console(&mut conn, "vm").await;
    assert_eq!((c.bytes_from_guest, c.bytes_to_guest), (37, 6));
}

/// Real QEMU with reconnect-ms: when the console goes and comes back,
/// QEMU connects again by itself.
#[tokio::test]
async fn qemu_reconnects_to_a_recreated_console() {
    if skip_without(Boot::Firmware) {
        return;
    }
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "fw"})).await;
    let p = paths(&d, "fw");
    let client = Peer::connect(&p.client);
    let mut vm = Qemu::start(&p.guest, Boot::Firmware, Some(100));
    client.wait_contains_within(b"SeaBIOS (version ", BOOT);
    wait_console(&mut conn, "fw", "connected", |c| c.guest_connected).await;

    call(&mut conn, "RemoveConsole", json!({"name": "fw"}))
        .await
        .unwrap();
    client.wait_eof();
    vm.assert_running();
    create(&mut conn, json!({"name": "fw"})).await;
    wait_console(&mut conn, "fw", "reconnected", |c| c.guest_connected).await;

    // The log outlived the first console: a new client's replay holds the
    // banner. Its input goes to the new connection.
    let again = Peer::connect(&p.client);
    again.wait_contains(b"SeaBIOS (version ");
    again.send(b"x");
    wait_console(&mut conn, "fw", "1 byte to the guest", |c| {
        c.bytes_to_guest == 1
    })
    .await;
    vm.assert_running();
}

#[tokio::test]
async fn remove_console_closes_everything_but_the_log() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm", "viewers": true})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let clients = [Peer::connect(&p.client), Peer::connect(&p.client)];
    let viewer = Peer::connect(&p.view);
    wait_console(&mut conn, "vm", "attached", |c| {
        c.clients == 2 && c.viewers == 1 && c.guest_connected
    })
    .await;
    guest.send(b"hello\n");
    for c in clients.iter().chain([&viewer]) {
        c.wait_len(6);
    }
    // Sent just before the removal: it still reaches the log.
    guest.send(b"last words\n");
    call(&mut conn, "RemoveConsole", json!({"name": "vm"}))
        .await
        .unwrap();

    for c in clients.iter().chain([&viewer, &guest]) {
        c.wait_eof();
    }
    for s in [&p.guest, &p.client, &p.view] {
        assert!(!s.exists(), "{} is still there", s.display());
    }
    let refused = UnixStream::connect(&p.client).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        lossy(&fs::read(d.log_path("vm")).unwrap()),
        "hello\nlast words\n"
    );
    let list = conn.list_logs().await.unwrap().unwrap();
    assert!(list.consoles.is_empty(), "{:?}", list.consoles);
    let log = list.logs.iter().find(|l| l.name == "vm").unwrap();
    assert_eq!(log.size, 17);

    assert_eq!(
        call(&mut conn, "RemoveConsole", json!({"name": "vm"})).await,
        Err(ManagerError::NoSuchConsole { name: "vm".into() })
    );
    // The name is free again, and the new console appends to the old log.
    create(&mut conn, json!({"name": "vm"})).await;
    let guest = Peer::connect(&p.guest);
    guest.send(b"second life\n");
    wait_from_guest(&mut conn, "vm", 12).await;
    assert_eq!(
        lossy(&fs::read(d.log_path("vm")).unwrap()),
        "hello\nlast words\nsecond life\n"
    );
}

#[tokio::test]
async fn a_duplicate_name_and_too_many_consoles_are_refused() {
    let d = Daemon::start("[limits]\nmax-consoles = 2\n");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let client = Peer::connect(&p.client);
    wait_console(&mut conn, "vm", "1 client", |c| c.clients == 1).await;

    assert_eq!(
        call(
            &mut conn,
            "CreateConsole",
            json!({"name": "vm", "log": false})
        )
        .await,
        Err(ManagerError::ConsoleExists { name: "vm".into() })
    );
    // The first console is untouched.
    let guest = Peer::connect(&p.guest);
    guest.send(b"ok\n");
    assert_eq!(client.wait_len(3), b"ok\n");
    let all = consoles(&mut conn).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].clients, 1);
    assert!(all[0].log_path.is_some());

    create(&mut conn, json!({"name": "vm2"})).await;
    assert_eq!(
        call(&mut conn, "CreateConsole", json!({"name": "vm3"})).await,
        Err(ManagerError::LimitReached {
            limit: "consoles".into(),
            max: 2
        })
    );
    assert!(!paths(&d, "vm3").guest.exists());
    assert!(!paths(&d, "vm3").client.exists());
    assert_eq!(consoles(&mut conn).await.len(), 2);
}

/// Runs python3 as uid/gid 65534: connects to `socket`, sends `send`,
/// reads until it has seen `until`, prints what it read. On a failed
/// connect it prints the errno's name and exits 3.
fn as_nobody(socket: &Path, send: &str, until: &str) -> std::process::Child {
    const SCRIPT: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(errno.errorcode[e.errno])
    sys.exit(3)
s.sendall(sys.argv[2].encode())
got = b""
while sys.argv[3].encode() not in got:
    b = s.recv(4096)
    if not b:
        break
    got += b
sys.stdout.write(got.decode())
"#;
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", SCRIPT])
        .arg(socket)
        .args([send, until])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finished(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "{:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), stdout)
}

#[tokio::test]
async fn socket_owner_and_mode_decide_who_can_connect() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the ownership test switches uid and needs root");
        return;
    }
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let owner = SocketOwner {
        uid: Some(65534),
        gid: Some(65534),
        mode: Some(0o600),
    };
    let reply = conn
        .create_console(
            "owned",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(&owner),
            Some(true),
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(reply.view_socket.is_some());
    create(&mut conn, json!({"name": "plain"})).await;
    let owned = paths(&d, "owned");
    let plain = paths(&d, "plain");
    for s in [&owned.guest, &owned.client, &owned.view] {
        let m = fs::metadata(s).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (65534, 65534, 0o600),
            "{}",
            s.display()
        );
    }
    for s in [&plain.guest, &plain.client] {
        let m = fs::metadata(s).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600));
    }

    // uid 65534 can be the guest...
    let root_client = Peer::connect(&owned.client);
    let (code, _) = finished(as_nobody(&owned.guest, "guest of nobody\n", ""));
    assert_eq!(code, 0);
    root_client.wait_contains(b"guest of nobody\n");
    // ...and a client, both ways.
    let guest = Peer::connect(&owned.guest);
    wait_console(&mut conn, "owned", "connected", |c| c.guest_connected).await;
    let nobody = as_nobody(&owned.client, "typed by nobody\n", "answer\n");
    assert_eq!(guest.wait_len(16), b"typed by nobody\n");
    guest.send(b"answer\n");
    let (code, out) = finished(nobody);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "guest of nobody\nanswer\n", "replay, then live output");

    // The daemon's own sockets keep uid 65534 out.
    for s in [&plain.guest, &plain.client] {
        let (code, out) = finished(as_nobody(s, "", ""));
        assert_eq!((code, out.trim()), (3, "EACCES"), "{}", s.display());
    }
    let c = console(&mut conn, "plain").await;
    assert_eq!((c.clients, c.guest_connected), (0, false));
}

#[tokio::test]
async fn follow_streams_console_output_to_varlinkctl() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    guest.send(b"before\n");
    wait_from_guest(&mut conn, "vm", 7).await;

    let reply = raw_call(
        &d.socket(),
        br#"{"method":"io.guestlogd.Manager.Follow","parameters":{"name":"vm"}}"#,
    )
    .unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        reply["error"], "org.varlink.service.ExpectedMore",
        "{reply}"
    );

    let ctl = match tool("varlinkctl") {
        Ok(ctl) => ctl,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mut child = Command::new(ctl)
        .args(["call", "--more"])
        .arg(d.address())
        .args(["io.guestlogd.Manager.Follow", r#"{"name":"vm"}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = Collector::default();
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (got, dropped) = (got.clone(), dropped.clone());
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Piped, varlinkctl writes JSON-SEQ: RS, a JSON object, LF.
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let line = line.trim_start_matches('\u{1e}').trim();
                if line.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).unwrap();
                dropped.lock().unwrap().push(v["dropped"].clone());
                let data = base64::engine::general_purpose::STANDARD
                    .decode(v["data"].as_str().unwrap())
                    .unwrap();
                got.push(&data);
            }
            got.end();
        })
    };
    // The replay, then what is written from now on; client input is never
    // logged, only the guest's output.
    assert_eq!(got.wait_len(7), b"before\n");
    guest.send(b"after\n");
    assert_eq!(got.wait_len(13), b"before\nafter\n");
    let client = Peer::connect(&p.client);
    client.send(b"typed\n");
    assert_eq!(guest.wait_len(6), b"typed\n");
    guest.send(b"echoed\n");
    client.wait_len(20);
    assert_eq!(lossy(&got.wait_len(20)), "before\nafter\nechoed\n");

    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    assert!(dropped.lock().unwrap().iter().all(|d| *d == json!(0)));
}

#[tokio::test]
async fn a_console_without_a_log_still_relays_and_replays() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let reply = create(&mut conn, json!({"name": "mem", "log": false})).await;
    assert_eq!(reply["logPath"], Value::Null, "{reply}");
    let p = paths(&d, "mem");
    let guest = Peer::connect(&p.guest);
    let client = Peer::connect(&p.client);
    wait_console(&mut conn, "mem", "attached", |c| {
        c.clients == 1 && c.guest_connected
    })
    .await;
    guest.send(b"no log\n");
    assert_eq!(client.wait_len(7), b"no log\n");
    client.send(b"in\n");
    assert_eq!(guest.wait_len(3), b"in\n");
    let late = Peer::connect(&p.client);
    assert_eq!(late.wait_len(7), b"no log\n");

    // Clients may have a read before the relay has counted it.
    wait_from_guest(&mut conn, "mem", 7).await;
    let list = conn.list_logs().await.unwrap().unwrap();
    assert!(list.logs.is_empty(), "{:?}", list.logs);
    let c = &list.consoles[0];
    assert_eq!((c.name.as_str(), c.log_path.as_deref()), ("mem", None));
    assert_eq!((c.bytes_from_guest, c.bytes_to_guest), (7, 3));
    assert!(!d.log_path("mem").exists());
    assert_eq!(fs::read_dir(d.log_dir()).unwrap().count(), 0);
    assert_eq!(
        call(&mut conn, "ReadLog", json!({"name": "mem"})).await,
        Err(ManagerError::NoSuchLog { name: "mem".into() })
    );
}

#[tokio::test]
async fn viewers_watch_but_cannot_type() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let reply = create(&mut conn, json!({"name": "vm", "viewers": true})).await;
    let p = paths(&d, "vm");
    assert_eq!(reply["viewSocket"], p.view.to_str().unwrap());
    let guest = Peer::connect(&p.guest);
    guest.send(b"early\n");
    wait_from_guest(&mut conn, "vm", 6).await;

    let viewer = Peer::connect(&p.view);
    let client = Peer::connect(&p.client);
    wait_console(&mut conn, "vm", "attached", |c| {
        c.clients == 1 && c.viewers == 1
    })
    .await;
    viewer.send(b"from the viewer\n");
    client.send(b"from the client\n");
    assert_eq!(lossy(&guest.wait_len(16)), "from the client\n");
    guest.send(b"out\n");
    for c in [&viewer, &client] {
        assert_eq!(c.wait_len(10), b"early\nout\n");
    }
    let c = wait_from_guest(&mut conn, "vm", 10).await;
    assert_eq!(c.view_socket.as_deref(), p.view.to_str());
    assert_eq!((c.clients, c.viewers, c.bytes_to_guest), (1, 1, 16));
    assert_eq!(lossy(&guest.data()), "from the client\n");
    assert_eq!(lossy(&fs::read(d.log_path("vm")).unwrap()), "early\nout\n");
}

/// Every figure ListLogs gives for a console, after a scripted exchange.
#[tokio::test]
async fn list_logs_counts_a_scripted_exchange() {
    let d = Daemon::start("[limits]\nclient-queue = 4096\n");
    let mut conn = connect(&d).await;
    create(
        &mut conn,
        json!({"name": "vm", "viewers": true, "replayBytes": 0}),
    )
    .await;
    let p = paths(&d, "vm");
    let c = console(&mut conn, "vm").await;
    assert_eq!(
        c,
        ConsoleInfo {
            name: "vm".into(),
            guest_socket: p.guest.display().to_string(),
            client_socket: p.client.display().to_string(),
            view_socket: Some(p.view.display().to_string()),
            log_path: Some(d.log_path("vm").display().to_string()),
            guest_connected: false,
            clients: 0,
            viewers: 0,
            bytes_from_guest: 0,
            bytes_to_guest: 0,
            bytes_dropped_for_clients: 0,
            throttled_seconds: 0.0,
            writers: "all".into(),
            writer: None,
            boot_log_path: None,
            boot_bytes: 0,
            domain: None,
        }
    );

    let guest = Peer::connect(&p.guest);
    let one = Peer::connect(&p.client);
    let two = Peer::connect(&p.client);
    let viewer = Peer::connect(&p.view);
    let stalled = stalled_client(&p.client);
    let c = wait_console(&mut conn, "vm", "attached", |c| {
        c.guest_connected && c.clients == 3 && c.viewers == 1
    })
    .await;
    assert_eq!(
        (
            c.bytes_from_guest,
            c.bytes_to_guest,
            c.bytes_dropped_for_clients
        ),
        (0, 0, 0)
    );

    one.send(b"abc\n");
    assert_eq!(guest.wait_len(4), b"abc\n");
    two.send(b"defgh\n");
    viewer.send(b"ignored\n");
    assert_eq!(guest.wait_len(10), b"abc\ndefgh\n");
    // 600 KB, each 4 KiB only once the readers have the one before: they
    // never fall behind, while the stalled client's 4 KiB queue overflows.
    let data = lines("out", 600_000);
    feed_in_step(&guest, &data, 4096, &[&one, &two, &viewer]);
    let c = wait_from_guest(&mut conn, "vm", data.len()).await;
    assert_eq!(c.bytes_to_guest, 10);
    assert!(c.bytes_dropped_for_clients > 0, "{c:?}");
    for r in [&one, &two, &viewer] {
        assert!(r.data() == data);
    }

    let stalled = Peer::new(stalled);
    let dropped = wait_reconstructed(&stalled, &data);
    let c = console(&mut conn, "vm").await;
    assert_eq!(c.bytes_dropped_for_clients, dropped as i64);

    drop(stalled);
    drop(two);
    let c = wait_console(&mut conn, "vm", "1 client", |c| c.clients == 1).await;
    assert_eq!(c.viewers, 1);
    drop(viewer);
    wait_console(&mut conn, "vm", "no viewer", |c| c.viewers == 0).await;
    drop(guest);
    let c = wait_console(&mut conn, "vm", "disconnected", |c| !c.guest_connected).await;
    assert_eq!(
        (
            c.clients,
            c.viewers,
            c.bytes_from_guest,
            c.bytes_to_guest,
            c.bytes_dropped_for_clients
        ),
        (1, 0, data.len() as i64, 10, dropped as i64)
    );
    assert!(
        fs::read(d.log_path("vm")).unwrap() == data,
        "the log is not exactly the guest's output"
    );
    drop(one);
}

/// Starts a Follow of `name` on a raw connection that then reads nothing
/// more: its replay of `replay` bytes, the first reply, is read to know
/// that the follow has begun.
fn stalled_follower(d: &Daemon, name: &str, replay: &[u8]) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    let call = json!({
        "method": "io.guestlogd.Manager.Follow",
        "parameters": {"name": name, "replayBytes": replay.len()},
        "more": true,
    });
    s.write_all(format!("{call}\0").as_bytes()).unwrap();
    let mut s = BufReader::new(s);
    let first = next_message(&mut s).expect("no reply to Follow");
    assert_eq!(decode(&first["parameters"]["data"]), replay, "{first}");
    s
}

/// The next NUL-terminated varlink message, or `None` at EOF.
fn next_message(s: &mut BufReader<UnixStream>) -> Option<Value> {
    let mut msg = Vec::new();
    s.read_until(0, &mut msg).unwrap();
    (msg.pop() == Some(0)).then(|| serde_json::from_slice(&msg).unwrap())
}

fn decode(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// How many bytes wait unread in `s`, without taking them.
fn queued(s: &UnixStream) -> usize {
    use nix::sys::socket::{MsgFlags, recv};
    let mut buf = vec![0u8; 4 << 20];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    recv(std::os::fd::AsRawFd::as_raw_fd(s), &mut buf, flags).unwrap_or(0)
}

/// The interface: "A follower that reads too slowly loses its oldest
/// unsent output ... and never slows the writers." Nor may it stop the
/// daemon from answering everyone else.
#[tokio::test]
async fn a_stalled_follower_does_not_freeze_the_api() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let client = Peer::connect(&p.client);
    guest.send(b"start\n");
    client.wait_len(6);
    let follower = stalled_follower(&d, "vm", b"start\n");

    let data = lines("out", 4 << 20);
    feed_in_step(&guest, &data, 64 * 1024, &[&client]);
    // The console goes on relaying whatever the follower does.
    assert!(client.data()[6..] == data);
    // Wait until the follower's socket is about full: replies of up to a
    // queue's worth (256 KiB, 350 KB of JSON) do not fit any more, so the
    // daemon is now waiting to write the rest.
    let deadline = Instant::now() + 3 * WAIT;
    while queued(follower.get_ref()) < 150_000 {
        assert!(Instant::now() < deadline, "the follower got no output");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A guard against hanging, not a timing assertion: an answer takes
    // milliseconds.
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        let mut fresh = connect(&d).await;
        fresh.list_logs().await.unwrap().unwrap()
    })
    .await;
    assert!(
        answer.is_ok(),
        "ListLogs got no answer in 15 s while a follower does not read"
    );
    drop(follower);
}

/// ListLogs' bytesDroppedForClients sums what "slow clients, viewers and
/// followers did not get"; a follower's replies name exactly what it lost.
#[tokio::test]
async fn a_stalled_followers_losses_are_counted() {
    // Small queues: small Follow replies, so the test is quick.
    let d = Daemon::start("[limits]\nclient-queue = 4096\n");
    let mut conn = connect(&d).await;
    create(&mut conn, json!({"name": "vm"})).await;
    let p = paths(&d, "vm");
    let guest = Peer::connect(&p.guest);
    let client = Peer::connect(&p.client);
    guest.send(b"start\n");
    client.wait_len(6);
    let mut follower = stalled_follower(&d, "vm", b"start\n");

    let data = lines("out", 1 << 20);
    feed_in_step(&guest, &data, 4096, &[&client]);

    // Read it now: the data of its replies, with the gaps each names,
    // is exactly the output.
    let (mut at, mut dropped) = (0usize, 0u64);
    while at < data.len() {
        let reply = next_message(&mut follower).expect("the follow ended");
        assert_eq!(reply["continues"], true, "{reply}");
        let n = reply["parameters"]["dropped"].as_u64().unwrap();
        let chunk = decode(&reply["parameters"]["data"]);
        at += n as usize;
        dropped += n;
        assert!(at <= data.len(), "a reply drops past the end: {reply}");
        assert!(
            data[at..].starts_with(&chunk),
            "a follow reply does not fit at byte {at}"
        );
        at += chunk.len();
    }
    assert_eq!(at, data.len());
    assert!(dropped > 0, "the stalled follower lost nothing");
    let c = console(&mut conn, "vm").await;
    assert_eq!(c.clients, 1);
    assert_eq!(
        c.bytes_dropped_for_clients, dropped as i64,
        "bytesDroppedForClients leaves out the follower's losses"
    );
}
