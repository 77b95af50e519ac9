//! What a console costs in descriptors, counted in the real daemon's
//! `/proc/PID/fd`: two listeners when idle, plus the guest, each client or
//! viewer, and the log file only while output flows; every one of them
//! still in the FD store (GetStatus' storedFds), each held once. And the
//! default limits: the daemon raises its soft RLIMIT_NOFILE to the hard
//! one.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use common::{Daemon, call};
use serde_json::{Value, json};

fn fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Waits for a condition the daemon reaches on its own (an accept, the
/// idle sweep); the deadline only turns a hang into a failure.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn stored(c: &mut zlink::tokio::unix::Connection) -> u64 {
    let s = call(c, "GetStatus", json!({})).await.unwrap();
    s["storedFds"].as_u64().unwrap()
}

fn read_line(s: &mut UnixStream, want: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_console_holds_five_descriptors_at_most_and_stores_them_all() {
    const N: usize = 8;
    let d = Daemon::start("");
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    // The log directory is opened at the first log, once: open it, and let
    // that log's file close, before counting.
    call(&mut c, "AppendLog", json!({"name": "warm", "message": "x"}))
        .await
        .unwrap();
    let mut open_files = 1;
    while open_files > 0 {
        let s = call(&mut c, "GetStatus", json!({})).await.unwrap();
        open_files = s["openLogFiles"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With our connection open, so it counts in both.
    let base = fds(&d);
    let base_stored = stored(&mut c).await;
    let delta = |d: &Daemon| fds(d) as i64 - base as i64;

    let mut made: Vec<Value> = Vec::new();
    for k in 0..N {
        let r = call(&mut c, "CreateConsole", json!({"name": format!("c{k}")}))
            .await
            .unwrap();
        made.push(r);
    }
    // Idle, no guest: the guest's and the clients' listeners, nothing else
    // (no view listener without viewers; no log file while idle).
    wait_until("two descriptors per idle console", || {
        delta(&d) == 2 * N as i64
    });

    let mut peers = Vec::new();
    for (k, r) in made.iter().enumerate() {
        let mut guest = UnixStream::connect(r["guestSocket"].as_str().unwrap()).unwrap();
        let mut client = UnixStream::connect(r["clientSocket"].as_str().unwrap()).unwrap();
        let line = format!("hello from c{k}\r\n");
        guest.write_all(line.as_bytes()).unwrap();
        // Replay or live output: either way the client is attached and
        // the guest's output went through the log.
        read_line(&mut client, line.as_bytes());
        peers.push((guest, client));
    }
    // Guest, client, both listeners and the log file at most; beside
    // them, daemon-wide, the saved state's memfd may be being replaced
    // (the new one is stored before the old one goes).
    let busy = delta(&d);
    assert!(
        busy <= 5 * N as i64 + 2,
        "{busy} descriptors for {N} consoles"
    );
    // Once the logs are idle their files close: four each.
    wait_until("four descriptors per idle console", || {
        delta(&d) == 4 * N as i64
    });
    // Fewer descriptors, not fewer stored: listeners, guest and client of
    // each are in the store, each the one the daemon uses.
    assert_eq!(stored(&mut c).await, base_stored + 4 * N as u64);

    // A console with viewers has a third listener, and each viewer one
    // descriptor.
    let r = call(
        &mut c,
        "CreateConsole",
        json!({"name": "watched", "viewers": true}),
    )
    .await
    .unwrap();
    wait_until("three listeners for a console with viewers", || {
        delta(&d) == 4 * N as i64 + 3
    });
    let _viewer = UnixStream::connect(r["viewSocket"].as_str().unwrap()).unwrap();
    wait_until("one descriptor per viewer", || {
        delta(&d) == 4 * N as i64 + 4
    });
    assert_eq!(stored(&mut c).await, base_stored + 4 * N as u64 + 4);

    // A client that leaves takes its descriptor with it, here and in the
    // store.
    drop(peers.pop());
    wait_until("the client's and guest's descriptors closing", || {
        delta(&d) == 4 * N as i64 + 2
    });
    assert_eq!(stored(&mut c).await, base_stored + 4 * N as u64 + 2);
}

#[test]
fn the_daemon_raises_its_soft_nofile_limit_to_the_hard_one() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 1024 {
        println!("SKIPPED: the hard RLIMIT_NOFILE is {hard}: nothing to raise");
        return;
    }
    // Inherited by the daemon: the soft limit a unit without
    // LimitNOFILE= would give it.
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let d = Daemon::start("");
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let values: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(values[3], values[4], "{line}");
    assert_eq!(values[4], hard.to_string(), "{line}");
}
