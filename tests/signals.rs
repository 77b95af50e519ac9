//! Start-up and signals without systemd: the descriptor budget is checked,
//! SIGHUP changes nothing, and SIGTERM's drain of
//! the pipes ends even while a writer keeps writing.

mod common;

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use common::{Daemon, call_with_fds};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;

async fn open_pipe(d: &Daemon, name: &str) -> std::fs::File {
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let (reply, mut fds) = call_with_fds(&mut conn, "OpenPipe", json!({"name": name})).await;
    reply.unwrap();
    std::fs::File::from(fds.remove(0))
}

fn signal(d: &Daemon, sig: Signal) {
    signal_pid(d.pid(), sig);
}

fn wait_for_log(d: &Daemon, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(d.log_path(name))
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached {name}.log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sighup_is_ignored_and_every_pipe_goes_on() {
    let mut d = Daemon::start("");
    let mut pipe = open_pipe(&d, "vm").await;
    pipe.write_all(b"before\n").unwrap();
    wait_for_log(&d, "vm", "before\n");
    for _ in 0..3 {
        signal(&d, Signal::SIGHUP);
    }
    pipe.write_all(b"after\n").unwrap();
    wait_for_log(&d, "vm", "after\n");
    d.assert_alive();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.stderr().contains("SIGHUP ignored") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP went unmentioned: {}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_stops_within_its_drain_bound_while_a_writer_keeps_writing() {
    // A log that rotates every 4 KiB makes draining slower than writing.
    let mut d = Daemon::start("[log]\nmax-size = 4096\nmax-backups = 0\n");
    let pipe = open_pipe(&d, "busy").await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writers on every core, so the pipe is never empty for long.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let mut pipe = pipe.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut block = vec![b'x'; 64 * 1024];
                block[64 * 1024 - 1] = b'\n';
                while !stop.load(Relaxed) {
                    if pipe.write_all(&block).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(pipe);
    wait_for_log(&d, "busy", "xxxx");
    let t = Instant::now();
    let mut child = d.child.take().unwrap();
    signal_pid(child.id(), Signal::SIGTERM);
    // A guard against hanging, well past the 5 s drain bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM: still draining after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    eprintln!(
        "stopped {:?} after SIGTERM with a writer still writing",
        t.elapsed()
    );
    assert!(status.success(), "{status:?}");
    // The drain ends when the pipe is empty or at its 5 s bound, whichever
    // comes first; at the bound, what is left is logged with its size.
    if t.elapsed() >= Duration::from_secs(5) {
        assert!(
            d.stderr().contains("stopping with bytes still in a pipe"),
            "{}",
            d.stderr()
        );
    }
}

fn signal_pid(pid: u32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).unwrap();
}

/// At start, the worst case of the configured limits is held against
/// RLIMIT_NOFILE, and a configuration that cannot fit says so.
#[tokio::test]
async fn the_descriptor_budget_is_checked_at_start() {
    let d = Daemon::start("[limits]\nmax-consoles = 10\nmax-pipes = 100\n");
    let said = d.wait_stderr("descriptor budget fits");
    assert!(said.contains("descriptor budget fits"), "{said}");
    let d = Daemon::start("[limits]\nmax-consoles = 100000\nmax-pipes = 100000\n");
    let said = d.wait_stderr("may need more descriptors than RLIMIT_NOFILE allows");
    assert!(
        said.contains("may need more descriptors than RLIMIT_NOFILE allows"),
        "{said}"
    );
}
