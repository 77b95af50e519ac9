//! Zero-loss restarts without systemd: SIGUSR1 re-executes the daemon
//! while a real guest prints numbered lines, a client watches and a writer
//! streams into a pipe. Nothing is lost, repeated or disconnected.

#[path = "common/collect.rs"]
mod collect;
mod common;
#[path = "common/qemu.rs"]
mod qemu;

use collect::collect;
use std::{
    io::Write,
    os::unix::net::UnixStream,
    sync::{Arc, Mutex},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use common::Daemon;
use guestlogd::api::Manager as _;
use qemu::{Boot, Qemu};
use serde_json::json;

/// A console client that records everything it receives.
struct Client {
    socket: UnixStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Client {
    fn attach(path: &str) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        let seen = collect(socket.try_clone().unwrap());
        Self { socket, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(what) {
            assert!(Instant::now() < deadline, "never saw {what:?}");
            sleep(Duration::from_millis(50));
        }
    }
}

/// The numbers of the `SEQ nnnnnn` lines, in order.
fn seqs(text: &str) -> Vec<u32> {
    text.split("SEQ ")
        .skip(1)
        .filter_map(|rest| rest.get(..6)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn sigusr1_reexec_twenty_times_loses_nothing() {
    if let Some(why) = qemu::unavailable(Boot::Guest) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let created = conn
        .create_console(
            "vm", None, None, None, None, None, None, None, None, None, None, None, None, None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let (guest_socket, client_socket) = (
        created.guest_socket.to_owned(),
        created.client_socket.to_owned(),
    );
    let mut guest = Qemu::start(guest_socket.as_ref(), Boot::Guest, None);
    let client = Client::attach(&client_socket);
    client.wait_for("GUEST READY", Duration::from_secs(120));

    // A writer streams numbered lines into a pipe the whole time.
    let (reply, mut fds) =
        common::call_with_fds(&mut conn, "OpenPipe", json!({"name": "qemu-stdout"})).await;
    reply.unwrap();
    let mut pipe = std::fs::File::from(fds.remove(0));
    let writer = thread::spawn(move || {
        for i in 0..3000 {
            writeln!(pipe, "pipe line {i:06}").unwrap();
            if i % 100 == 0 {
                sleep(Duration::from_millis(20));
            }
        }
    });

    let before = conn.get_status().await.unwrap().unwrap();
    (&client.socket).write_all(b"count 2000 2\n").unwrap();
    for _ in 0..20 {
        sleep(Duration::from_millis(250));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid() as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        // The next call waits for the new daemon on the same socket.
    }
    writer.join().unwrap();
    client.wait_for("COUNT DONE 2000", Duration::from_secs(180));

    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let after = conn.get_status().await.unwrap().unwrap();
    assert_eq!(after.pid, before.pid, "a re-exec keeps the process");
    assert_eq!(after.adoptions, before.adoptions + 20);
    assert!(!after.fd_store);

    let expected: Vec<u32> = (1..=2000).collect();
    assert_eq!(
        seqs(&client.text()),
        expected,
        "the client missed or repeated lines"
    );
    let log = String::from_utf8_lossy(&std::fs::read(d.log_path("vm")).unwrap()).into_owned();
    assert_eq!(seqs(&log), expected, "the log missed or repeated lines");

    let deadline = Instant::now() + Duration::from_secs(30);
    let pipe_log = loop {
        let text = std::fs::read_to_string(d.log_path("qemu-stdout")).unwrap_or_default();
        if text.lines().count() >= 3000 || Instant::now() > deadline {
            break text;
        }
        sleep(Duration::from_millis(50));
    };
    let lines: Vec<String> = (0..3000).map(|i| format!("pipe line {i:06}")).collect();
    assert_eq!(pipe_log.lines().collect::<Vec<_>>(), lines);

    let consoles = conn.list_logs().await.unwrap().unwrap().consoles;
    assert!(consoles[0].guest_connected, "QEMU was disconnected");
    assert_eq!(consoles[0].clients, 1, "the client was disconnected");
    guest.assert_running();
}
