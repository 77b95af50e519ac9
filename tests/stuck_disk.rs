//! A disk that hangs freezes only the logs on it that it holds: the log
//! directory is a FUSE file system (tests/stuck/hangfs.py) whose writes to
//! `stuck*` files block while a flag file exists, as a dead NFS server's
//! or a failing disk's do. Three such logs are held at once (more than the
//! daemon's two async workers), and everything else goes on: other pipes,
//! AppendLog, ListLogs, GetStatus, a console relaying to its client, a
//! re-exec. A call on a held log is told it does not answer, and when the
//! disk comes back every held log carries on.

mod common;
#[path = "common/hangfs.rs"]
mod hangfs;

use std::{
    fs,
    io::Write,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use common::{Daemon, call, call_with_fds, read_until};
use guestlogd::api::ManagerError;
use hangfs::HangFs;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn connect(d: &Daemon) -> zlink::tokio::unix::Connection {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

async fn open_pipe(d: &Daemon, name: &str) -> fs::File {
    let (reply, mut fds) =
        call_with_fds(&mut connect(d).await, "OpenPipe", json!({"name": name})).await;
    reply.unwrap();
    fs::File::from(fds.remove(0))
}

/// Everything that does not need a held log still works.
async fn all_else_goes_on(d: &Daemon, hangfs: &HangFs, free: &mut fs::File, round: &str) {
    let line = format!("free {round}\n");
    free.write_all(line.as_bytes()).unwrap();
    wait_until("the free pipe's line reaching its log", || {
        hangfs.read("free.log").contains(&line)
    });
    let mut c = connect(d).await;
    let message = format!("appended {round}");
    call(
        &mut c,
        "AppendLog",
        json!({"name": "other", "message": message}),
    )
    .await
    .unwrap();
    assert!(hangfs.read("other.log").contains(&message));
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    let names: Vec<_> = list["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    for name in ["stuck-a", "stuck-b", "stuck-c", "free", "other"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    call(&mut c, "GetStatus", json!({})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_hangs_freezes_only_the_logs_it_holds() {
    let mut mounted = Err(String::new());
    let mut d = Daemon::start_with("", |dir| {
        mounted = HangFs::mount(&dir.join("backing"), &dir.join("log"));
    });
    let hangfs = match mounted {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED: no FUSE file system to stand in for a hung disk: {why}");
            return;
        }
    };
    let stuck = ["stuck-a", "stuck-b", "stuck-c"];
    let mut pipes = Vec::new();
    for name in stuck {
        let mut p = open_pipe(&d, name).await;
        p.write_all(b"before\n").unwrap();
        pipes.push(p);
    }
    let mut free = open_pipe(&d, "free").await;
    let mut c = connect(&d).await;
    call(&mut c, "CreateConsole", json!({"name": "con"}))
        .await
        .unwrap();
    let consoles = d.dir.path().join("run/consoles");
    let mut guest = UnixStream::connect(consoles.join("con.guest")).unwrap();
    let mut client = UnixStream::connect(consoles.join("con.client")).unwrap();
    for name in stuck {
        wait_until("the first lines", || {
            hangfs.read(&format!("{name}.log")) == "before\n"
        });
    }

    hangfs.hang();
    // stuck-a gets a pipe's worth at once, which is spliced rather than
    // read: the splice the disk holds must not hold the writer's pipe.
    let bulk: Vec<u8> = (0..4096)
        .flat_map(|i| format!("held {i:024}\n").into_bytes())
        .collect();
    pipes[0].write_all(&bulk).unwrap();
    for p in &mut pipes[1..] {
        p.write_all(b"held\n").unwrap();
    }
    for name in stuck {
        wait_until("the disk holding each stuck log's write", || {
            hangfs.holds(&format!("{name}.log"))
        });
    }
    // The writer of a held log still writes, and closes, at once.
    let mut writer = pipes[0].try_clone().unwrap();
    let wrote = std::thread::spawn(move || {
        writer.write_all(b"more\n").unwrap();
        drop(writer);
    });
    wait_until("the held log's writer to write and close", || {
        wrote.is_finished()
    });

    all_else_goes_on(&d, &hangfs, &mut free, "1").await;
    guest.write_all(b"hello from the guest\r\n").unwrap();
    read_until(&mut client, b"hello from the guest");
    // The log and the client get a read at once, and the guest is read
    // again only once the log has it.
    wait_until("the console's line in its log", || {
        hangfs.read("con.log").contains("hello from the guest")
    });

    // Calls on a held log are told so, and on time, not held with it.
    let (read, append) = tokio::join!(
        async {
            call(
                &mut connect(&d).await,
                "ReadLog",
                json!({"name": "stuck-a"}),
            )
            .await
        },
        async {
            call(
                &mut connect(&d).await,
                "AppendLog",
                json!({"name": "stuck-b", "message": "x"}),
            )
            .await
        },
    );
    for r in [read, append] {
        let Err(ManagerError::IoError { message }) = r else {
            panic!("a call on a held log: {r:?}");
        };
        assert!(message.contains("does not answer"), "{message}");
    }

    // A re-exec goes on too; the held writes' threads end with the old
    // image (each held at most one read).
    nix::sys::signal::kill(Pid::from_raw(d.pid() as i32), Signal::SIGUSR1).unwrap();
    wait_until("the re-exec", || d.stderr().contains("re-executing"));
    wait_until("the successor to serve", || {
        d.stderr().matches("ready").count() >= 2
    });
    all_else_goes_on(&d, &hangfs, &mut free, "2").await;
    d.assert_alive();

    // The disk answers again: every held log carries on.
    hangfs.recover();
    for p in &mut pipes {
        p.write_all(b"after\n").unwrap();
    }
    for name in stuck {
        wait_until("the stuck logs carrying on", || {
            hangfs.read(&format!("{name}.log")).ends_with("after\n")
        });
    }
    all_else_goes_on(&d, &hangfs, &mut free, "3").await;
    d.assert_alive();
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
}
