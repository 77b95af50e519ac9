//! What stalled readers cost: the real daemon's resident memory (VmRSS and
//! its peak, VmHWM, from /proc) while a guest floods consoles one byte per
//! write, and after the readers leave.
//!
//! A fake guest here writes with the smallest send buffer the kernel allows,
//! so it can be only a few bytes ahead of the daemon: most of the daemon's
//! reads get one to a few bytes, as from a QEMU serial port. Every
//! assertion is on memory; the deadlines only keep a broken daemon from
//! hanging the run.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Daemon, call};
use guestlogd::api::{ConsoleInfo, Manager as _};
use serde_json::{Value, json};
use zlink::tokio::unix::Connection;

/// The default client-queue.
const QUEUE: u64 = 256 * 1024;
/// The budget the issue sets for each whole scenario.
const TARGET_KIB: u64 = 100_000_000 / 1024;
/// How long any expected event may take before the test gives up.
const WAIT: Duration = Duration::from_secs(60);

async fn connect(d: &Daemon) -> Connection {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

async fn consoles(conn: &mut Connection) -> Vec<ConsoleInfo> {
    conn.list_logs().await.unwrap().unwrap().consoles
}

/// Polls ListLogs until every console satisfies `ok`.
async fn wait_consoles(conn: &mut Connection, what: &str, ok: impl Fn(&ConsoleInfo) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = consoles(conn).await;
        match all.iter().find(|c| !ok(c)) {
            None => return,
            Some(c) => assert!(Instant::now() < deadline, "never {what}: {c:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn guest_socket(d: &Daemon, name: &str) -> PathBuf {
    d.dir.path().join(format!("run/consoles/{name}.guest"))
}

fn client_socket(d: &Daemon, name: &str) -> PathBuf {
    d.dir.path().join(format!("run/consoles/{name}.client"))
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

/// A guest that writes `bytes` bytes one per write, each write blocking
/// while the daemon has a few unread.
fn flood(path: &Path, bytes: usize) -> std::thread::JoinHandle<()> {
    let s = UnixStream::connect(path).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &1).unwrap();
    std::thread::spawn(move || {
        let mut s = s;
        for i in 0..bytes {
            s.write_all(&[b'a' + (i % 26) as u8]).unwrap();
        }
        // The daemon sees the guest hang up only after reading everything.
        drop(s);
    })
}

/// A client that attaches and then never reads, with a small receive
/// buffer: the daemon can only queue for it.
fn stalled_client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    s
}

/// Starts a Follow of `name` on a raw connection that then reads nothing
/// more; its first reply (the replay, `replay`) is read to know that the
/// follow has begun.
fn stalled_follower(d: &Daemon, name: &str, replay: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(d.socket()).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    let call = json!({
        "method": "io.guestlogd.Manager.Follow",
        "parameters": {"name": name, "replayBytes": replay.len()},
        "more": true,
    });
    s.write_all(format!("{call}\0").as_bytes()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s);
    let mut msg = Vec::new();
    r.read_until(0, &mut msg).unwrap();
    assert_eq!(msg.pop(), Some(0), "no reply to Follow");
    let reply: Value = serde_json::from_slice(&msg).unwrap();
    assert!(reply["parameters"]["data"].is_string(), "{reply}");
    assert!(r.buffer().is_empty(), "more than the replay arrived");
    r.into_inner()
}

/// The daemon's open descriptors.
fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Waits until the daemon has closed descriptors down to `n`.
fn wait_fds(pid: u32, n: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while fds(pid) > n {
        assert!(Instant::now() < deadline, "{what}: {} fds open", fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon's RSS is within 10 % of `baseline` KiB; panics
/// with the last figure if it never gets there.
fn wait_rss_back(pid: u32, baseline: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = memory(pid, "VmRSS");
        if rss * 10 <= baseline * 11 {
            return rss;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: RSS stays at {rss} KiB, baseline {baseline} KiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 10 consoles, 16 clients each that never read, and a guest on each
/// writing a byte at a time: every client's queue fills with tiny reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_of_byte_writing_guests_cost_bounded_memory() {
    const CONSOLES: usize = 10;
    const CLIENTS: usize = 16;
    const BYTES: usize = 128 * 1024;
    let d = Daemon::start("");
    let pid = d.pid();
    let mut conn = connect(&d).await;
    let names: Vec<String> = (0..CONSOLES).map(|i| format!("vm{i}")).collect();
    for name in &names {
        let p = json!({"name": name, "slowClient": "drop", "replayBytes": 0});
        call(&mut conn, "CreateConsole", p).await.unwrap();
    }
    let clients: Vec<UnixStream> = names
        .iter()
        .flat_map(|n| (0..CLIENTS).map(|_| stalled_client(&client_socket(&d, n))))
        .collect();
    wait_consoles(&mut conn, "all clients attached", |c| {
        c.clients == CLIENTS as i64
    })
    .await;
    let baseline = memory(pid, "VmRSS");

    let guests: Vec<_> = names
        .iter()
        .map(|n| flood(&guest_socket(&d, n), BYTES))
        .collect();
    for g in guests {
        g.join().unwrap();
    }
    wait_consoles(&mut conn, "all output read", |c| {
        c.bytes_from_guest == BYTES as i64 && !c.guest_connected
    })
    .await;
    let peak = memory(pid, "VmHWM");
    let rss = memory(pid, "VmRSS");
    eprintln!("baseline {baseline} KiB, after the flood {rss} KiB, peak {peak} KiB");
    let stalled = (CONSOLES * CLIENTS) as u64;
    assert!(
        peak < TARGET_KIB,
        "{stalled} stalled clients: peak RSS {peak} KiB, over {TARGET_KIB} KiB"
    );
    assert!(
        rss - baseline <= stalled * 2 * QUEUE / 1024,
        "{stalled} stalled clients cost {} KiB, over 2 queues each",
        rss - baseline
    );

    // They leave; the guests are gone, so nothing is written any more.
    drop(clients);
    wait_consoles(&mut conn, "all clients gone", |c| c.clients == 0).await;
    let after = wait_rss_back(pid, baseline, "the clients left");
    eprintln!("after the clients left: {after} KiB");
}

/// 100 Follow streams that never read, of a log a guest writes a byte at a
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_followers_cost_bounded_memory() {
    const FOLLOWERS: usize = 100;
    const BYTES: usize = 128 * 1024;
    let d = Daemon::start("");
    let pid = d.pid();
    let mut conn = connect(&d).await;
    call(&mut conn, "CreateConsole", json!({"name": "vm"}))
        .await
        .unwrap();
    let mut guest = UnixStream::connect(guest_socket(&d, "vm")).unwrap();
    guest.write_all(b"start\n").unwrap();
    wait_consoles(&mut conn, "started", |c| c.bytes_from_guest == 6).await;
    let fds_before = fds(pid);
    let followers: Vec<UnixStream> = (0..FOLLOWERS)
        .map(|_| stalled_follower(&d, "vm", b"start\n"))
        .collect();
    let baseline = memory(pid, "VmRSS");

    drop(guest);
    wait_consoles(&mut conn, "guest gone", |c| !c.guest_connected).await;
    flood(&guest_socket(&d, "vm"), BYTES).join().unwrap();
    wait_consoles(&mut conn, "all output read", |c| {
        c.bytes_from_guest == 6 + BYTES as i64 && !c.guest_connected
    })
    .await;
    let peak = memory(pid, "VmHWM");
    let rss = memory(pid, "VmRSS");
    eprintln!("baseline {baseline} KiB, after the flood {rss} KiB, peak {peak} KiB");
    assert!(
        peak < TARGET_KIB,
        "{FOLLOWERS} stalled followers: peak RSS {peak} KiB, over {TARGET_KIB} KiB"
    );
    assert!(
        rss - baseline <= FOLLOWERS as u64 * 2 * QUEUE / 1024,
        "{FOLLOWERS} stalled followers cost {} KiB, over 2 queues each",
        rss - baseline
    );

    // They leave, and the log gets no more writes. The varlink server
    // takes its time to notice a connection has gone (that is not the
    // queues' doing), so wait for it to close them all.
    drop(followers);
    wait_fds(pid, fds_before, "the followers left");
    let after = wait_rss_back(pid, baseline, "the followers left");
    eprintln!("after the followers left: {after} KiB");
}
