//! A real QEMU guest flooding its serial console at more than the log's
//! rate is slowed, as on a real serial line, and loses nothing: the log,
//! and the client, hold every line it printed, in order; the time it was
//! held is counted; and another console keeps answering keystrokes
//! meanwhile (its round trips are printed, not asserted: no timing here).

#[path = "common/collect.rs"]
mod collect;
mod common;
#[path = "common/qemu.rs"]
mod qemu;

use collect::collect;
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Daemon, call};
use qemu::{Boot, Qemu};
use serde_json::{Value, json};

const RATE: u64 = 65536;
/// 8,192 lines of 65 bytes: eight times the rate's second.
const FLOOD: u64 = 8192 * 64;

struct Peer {
    socket: UnixStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn connect(path: &str) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        let seen = collect(socket.try_clone().unwrap());
        Self { socket, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn wait(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(what) {
            assert!(Instant::now() < deadline, "never saw {what:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A guest that echoes every byte back, on its own thread.
fn echo_guest(path: &str) {
    let mut s = UnixStream::connect(path).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// Round trips of a keystroke through a console whose guest echoes.
fn round_trips(client: &mut Peer, tag: &str, n: u32) -> Vec<Duration> {
    (0..n)
        .map(|k| {
            let key = format!("{tag}{k}\n");
            let t = Instant::now();
            client.socket.write_all(key.as_bytes()).unwrap();
            client.wait(&key, Duration::from_secs(20));
            t.elapsed()
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn console(d: &Daemon, name: &str) -> Value {
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    list["consoles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_guest_over_its_rate_is_slowed_and_loses_nothing() {
    if let Some(why) = qemu::unavailable(Boot::Guest) {
        return println!("SKIPPED: {why}");
    }
    let d = Daemon::start("");
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let slow = call(
        &mut c,
        "CreateConsole",
        json!({"name": "slow", "maxRate": RATE, "maxBurst": RATE, "maxSize": 1 << 24}),
    )
    .await
    .unwrap();
    let quick = call(&mut c, "CreateConsole", json!({"name": "quick"}))
        .await
        .unwrap();
    echo_guest(quick["guestSocket"].as_str().unwrap());
    let mut typist = Peer::connect(quick["clientSocket"].as_str().unwrap());
    let mut client = Peer::connect(slow["clientSocket"].as_str().unwrap());
    let mut vm = Qemu::start(
        Path::new(slow["guestSocket"].as_str().unwrap()),
        Boot::Guest,
        None,
    );
    client.wait("GUEST READY\r\n", Duration::from_secs(120));
    let calm = median(round_trips(&mut typist, "calm", 20));

    let start = Instant::now();
    client
        .socket
        .write_all(format!("flood {FLOOD}\n").as_bytes())
        .unwrap();
    // Keystrokes on the other console while this one is held back.
    std::thread::sleep(Duration::from_millis(500));
    let during = median(round_trips(&mut typist, "busy", 20));
    client.wait("FLOOD DONE\r\n", Duration::from_secs(120));
    let took = start.elapsed();
    vm.assert_running();

    let log = std::fs::read_to_string(d.log_path("slow")).unwrap();
    let seen = client.text();
    let n = FLOOD / 64;
    let mut at_log = 0;
    let mut at_seen = 0;
    for i in 1..=n {
        let line = format!("F{i:08} ");
        let Some(l) = log[at_log..].find(&line) else {
            panic!("line {i} is missing from the log");
        };
        at_log += l;
        let Some(s) = seen[at_seen..].find(&line) else {
            panic!("line {i} is missing from the client's output");
        };
        at_seen += s;
    }
    let info = console(&d, "slow").await;
    let throttled = info["throttledSeconds"].as_f64().unwrap();
    assert!(throttled > 1.0, "the guest was never held: {info}");
    assert_eq!(info["bytesDroppedForClients"], 0, "{info}");
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    let l = list["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "slow")
        .unwrap();
    assert_eq!(
        (&l["bytesDropped"], &l["bytesSuppressed"]),
        (&json!(0), &json!(0))
    );
    println!(
        "flood of {FLOOD} bytes at {RATE} B/s: {:.1} s ({:.0} B/s logged), held {throttled:.1} s; \
         the other console's keystroke round trip: {calm:?} calm, {during:?} during the flood",
        took.as_secs_f64(),
        FLOOD as f64 / took.as_secs_f64()
    );
}
