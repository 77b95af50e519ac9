//! Descriptors and the registry stay bounded whatever the churn: a log no
//! one uses closes its file (and opens it again when used), and past
//! `max-logs` the logs no one uses are forgotten, their files kept; only
//! when every log is in use is a new one refused.

mod common;

use std::{
    io::Write,
    time::{Duration, Instant},
};

use common::{Daemon, call, call_with_fds};
use guestlogd::api::ManagerError;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::{Value, json};

fn fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count())
        .unwrap_or(0)
}

async fn connect(d: &Daemon) -> zlink::tokio::unix::Connection {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

async fn status(d: &Daemon) -> Value {
    call(&mut connect(d).await, "GetStatus", json!({}))
        .await
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn logs_no_one_uses_hold_no_descriptors() {
    let mut d = Daemon::start("");
    let baseline = fds(&d);
    let mut c = connect(&d).await;
    for k in 0..3000 {
        let name = format!("instance-{k:08x}");
        call(
            &mut c,
            "AppendLog",
            json!({"name": name, "message": "booted"}),
        )
        .await
        .unwrap();
    }
    drop(c);
    wait_until("the idle logs' files closing", || fds(&d) <= baseline + 4);
    let s = status(&d).await;
    assert_eq!(s["logs"], 3000, "{s}");
    assert_eq!(s["openLogFiles"], 0, "{s}");

    // A log opens again when used, at its end.
    let mut c = connect(&d).await;
    call(
        &mut c,
        "AppendLog",
        json!({"name": "instance-00000007", "message": "rebooted"}),
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(d.log_path("instance-00000007")).unwrap();
    assert_eq!(text, "booted\nrebooted\n");

    // A re-exec does not open them all again.
    nix::sys::signal::kill(Pid::from_raw(d.pid() as i32), Signal::SIGUSR1).unwrap();
    wait_until("the successor to serve", || {
        d.stderr().matches(" ready ").count() >= 2
    });
    let s = status(&d).await;
    assert_eq!(s["logs"], 3000, "{s}");
    assert!(s["openLogFiles"].as_u64().unwrap() <= 1, "{s}");
    wait_until("the descriptors back at their baseline", || {
        fds(&d) <= baseline + 4
    });
    d.assert_alive();
}

#[tokio::test]
async fn past_max_logs_unused_logs_are_forgotten_and_logs_in_use_never() {
    let d = Daemon::start("[limits]\nmax-logs = 50\n");
    let mut c = connect(&d).await;
    for k in 0..200 {
        let name = format!("churn-{k}");
        call(&mut c, "AppendLog", json!({"name": name, "message": "x"}))
            .await
            .unwrap();
    }
    let s = status(&d).await;
    assert!(s["logs"].as_u64().unwrap() <= 50, "{s}");
    for k in 0..200 {
        // Forgotten, not removed: every file is still there.
        assert!(d.log_path(&format!("churn-{k}")).exists());
    }

    // Fifty logs in use fill the registry: the next new log is refused,
    // and nothing in use is forgotten for it.
    let mut pipes = Vec::new();
    for k in 0..50 {
        let (reply, mut fds) =
            call_with_fds(&mut c, "OpenPipe", json!({"name": format!("vm-{k}")})).await;
        reply.unwrap();
        pipes.push(std::fs::File::from(fds.remove(0)));
    }
    let refused = call(&mut c, "OpenPipe", json!({"name": "one-too-many"})).await;
    let Err(ManagerError::LimitReached { limit, max }) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!((limit.as_str(), max), ("logs", 50));
    let refused = call(&mut c, "AppendLog", json!({"name": "new", "message": "x"})).await;
    assert!(
        matches!(refused, Err(ManagerError::LimitReached { .. })),
        "{refused:?}"
    );
    assert!(!d.log_path("one-too-many").exists());
    for (k, p) in pipes.iter_mut().enumerate() {
        p.write_all(format!("line {k}\n").as_bytes()).unwrap();
    }
    for k in 0..50 {
        let path = d.log_path(&format!("vm-{k}"));
        wait_until("each pipe's line", || {
            std::fs::read_to_string(&path).unwrap_or_default() == format!("line {k}\n")
        });
    }
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    assert_eq!(list["logs"].as_array().unwrap().len(), 50);

    // A pipe that closes frees its log's place.
    pipes.pop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(
            &mut c,
            "AppendLog",
            json!({"name": "fits-now", "message": "x"}),
        )
        .await
        {
            Ok(_) => break,
            Err(ManagerError::LimitReached { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A log forgotten under `max-logs` comes back with its own policy, also
/// across a re-exec, and nothing brings it back deleting its backups.
#[tokio::test]
async fn a_forgotten_log_comes_back_with_its_policy_and_its_backups() {
    let d = Daemon::start("[limits]\nmax-logs = 16\n");
    let mut c = connect(&d).await;
    let (reply, mut fds) = call_with_fds(
        &mut c,
        "OpenPipe",
        json!({"name": "keep", "maxSize": 4096, "maxBackups": 8}),
    )
    .await;
    reply.unwrap();
    let mut pipe = std::fs::File::from(fds.remove(0));
    // 9 × 4096 bytes of 64-byte lines: every backup full.
    for k in 0..576 {
        pipe.write_all(format!("{k:063}\n").as_bytes()).unwrap();
    }
    drop(pipe);
    let backup = |k: u32| d.log_dir().join(format!("keep.log.{k}"));
    wait_until("eight backups", || backup(7).exists());
    // Pushed out by others once the pipe is gone.
    let mut gone = false;
    for k in 0..400 {
        let name = format!("other-{k}");
        call(&mut c, "AppendLog", json!({"name": name, "message": "x"}))
            .await
            .unwrap();
        let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
        if !list["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "keep")
        {
            gone = true;
            break;
        }
    }
    assert!(gone, "the log was never forgotten");
    // Its policy is in the saved state a successor reads.
    nix::sys::signal::kill(Pid::from_raw(d.pid() as i32), Signal::SIGUSR1).unwrap();
    wait_until("the successor to serve", || {
        d.stderr().matches(" ready ").count() >= 2
    });
    let mut c = connect(&d).await;
    call(
        &mut c,
        "AppendLog",
        json!({"name": "keep", "message": "back again"}),
    )
    .await
    .unwrap();
    for k in 0..8 {
        assert!(backup(k).exists(), "keep.log.{k} was deleted");
    }
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    let keep = list["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "keep")
        .cloned()
        .unwrap();
    assert_eq!(
        (&keep["maxSize"], &keep["maxBackups"]),
        (&json!(4096), &json!(8)),
        "{keep}"
    );
    assert_eq!(keep["backups"], 8, "{keep}");
}
