//! Console peers that misbehave cost only themselves: input typed with no
//! guest never reaches a later guest, a listener out of FDs does not stop
//! the connected guest's output, and a guest that connects and leaves in a
//! loop writes a few log lines a second, not one per connection.

mod common;

use std::{
    io::Write,
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{Daemon, call, read_until};
use serde_json::json;

async fn console(d: &Daemon, name: &str) -> (PathBuf, PathBuf) {
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    call(&mut c, "CreateConsole", json!({"name": name}))
        .await
        .unwrap();
    let dir = d.dir.path().join("run/consoles");
    (
        dir.join(format!("{name}.guest")),
        dir.join(format!("{name}.client")),
    )
}

#[tokio::test]
async fn input_typed_with_no_guest_never_reaches_a_later_guest() {
    let d = Daemon::start("");
    let (guest_path, client_path) = console(&d, "vm").await;
    let mut client = UnixStream::connect(&client_path).unwrap();
    client.write_all(b"my-root-password\r").unwrap();
    read_until(&mut client, b"no guest is connected; input dropped");

    let mut guest = UnixStream::connect(&guest_path).unwrap();
    // Once the guest's output reaches the client, the guest is connected.
    guest.write_all(b"login: ").unwrap();
    read_until(&mut client, b"login: ");
    client.write_all(b"root\n").unwrap();
    let got = read_until(&mut guest, b"root\n");
    assert_eq!(
        got, b"root\n",
        "the guest got input typed before it connected"
    );
}

#[tokio::test]
async fn a_listener_out_of_fds_does_not_stop_the_guests_output() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: lowering the daemon's RLIMIT_NOFILE needs root");
        return;
    }
    let d = Daemon::start("");
    let (guest_path, client_path) = console(&d, "vm").await;
    let mut guest = UnixStream::connect(&guest_path).unwrap();
    let mut client = UnixStream::connect(&client_path).unwrap();
    guest.write_all(b"hello\n").unwrap();
    read_until(&mut client, b"hello\n");

    // No descriptor left: every accept now fails with EMFILE. The limit
    // bounds descriptor numbers, and a closed one leaves a hole below any
    // count, so it goes below the first free number: the open ones stay.
    let limit = "--nofile=3:3";
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &d.pid().to_string(), limit])
        .status()
        .unwrap();
    assert!(ok.success());
    // A second guest and a second client wait in the listeners' backlogs.
    let _pending_guest = UnixStream::connect(&guest_path).unwrap();
    let _pending_client = UnixStream::connect(&client_path).unwrap();
    for i in 0..50 {
        let line = format!("line {i} while out of FDs\n");
        guest
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {}", d.stderr()));
        read_until(&mut client, line.as_bytes());
    }
    let stderr = d.stderr();
    let warnings = stderr.matches("accept failed").count();
    assert!(warnings > 0, "the failing accept was not logged");
    eprintln!("50 lines relayed while out of FDs; {warnings} accept warnings logged");
}

#[tokio::test]
async fn a_guest_connect_and_leave_loop_logs_a_few_lines_a_second() {
    let d = Daemon::start("");
    let (guest_path, _) = console(&d, "vm").await;
    let before = d.stderr().lines().count();
    let t = Instant::now();
    for _ in 0..2000 {
        drop(UnixStream::connect(&guest_path).unwrap());
    }
    let took = t.elapsed();
    // Let the relay see the last of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = d.stderr().lines().count() - before;
    eprintln!("2,000 guest connections in {took:?}: {lines} log lines");
    assert!(
        lines <= 30 * (took.as_secs() as usize + 2),
        "{lines} log lines for 2,000 guest connections in {took:?}"
    );
}
