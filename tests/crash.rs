//! A `kill -9` at any instant loses nothing the caller was told exists:
//! under a real systemd 257 with the FD store, a pipe, a console, its guest
//! connection and a client each survive a kill that comes right after
//! they were made, with no planned stop in between. 100 pipe rounds kill
//! at a random point around the call; 10 console rounds kill right after
//! the client attached.

#[path = "common/systemd.rs"]
mod systemd;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use guestlogd::api::Manager as _;
use serde_json::json;
use systemd::{Systemd, wait_status};

/// The host's pid of the process that is `inner` in the container.
/// The host's pid of `sd`'s guestlogd whose pid inside is `inner`. Only
/// processes in `sd`'s pid namespace count: the other test here boots a
/// container of its own, whose guestlogd may have the same pid inside.
fn host_pid(sd: &Systemd, inner: i64) -> i32 {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let ours = ns(&sd.pid1.to_string());
    assert!(ours.is_some(), "no pid namespace for the container's PID 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "guestlogd" || ns(&pid.to_string()) != ours {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ns = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
            if ns.and_then(|l| l.split_whitespace().last()) == Some(&inner.to_string()) {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no host pid for container pid {inner}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn wait_file(path: &Path, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_read(s: &mut UnixStream, needle: &str) -> bool {
    read_until(s, needle).is_some()
}

/// What `s` gave until `needle` arrived, or `None`.
fn read_until(s: &mut UnixStream, needle: &str) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return Some(text.into_owned());
        }
    }
    None
}

/// A small deterministic generator, so a failing round can be replayed.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[tokio::test]
async fn a_kill_at_any_instant_keeps_every_new_pipe_console_and_client() {
    if let Some(why) = systemd::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let (sd, socket) = Systemd::with_guestlogd(env!("CARGO_BIN_EXE_guestlogd"));
    let mut st = wait_status(&socket, "activation", |_| true).await;
    assert!(st.fd_store, "systemd's FD store is in use");
    let log = sd.host().join("log");

    // Pipes: the kill lands anywhere from before the call to just after
    // its reply. A pipe whose reply arrived must keep working.
    let (mut kept, mut unanswered, mut seed) = (0, 0, 7u64);
    for round in 0..100 {
        let pid = host_pid(&sd, st.pid);
        // Every tenth round kills right after the reply; the rest at a
        // random point in the first 4 ms after the call is sent.
        let delay = (round % 10 != 0).then(|| Duration::from_micros(next(&mut seed) % 4000));
        let killer = delay.map(|d| {
            std::thread::spawn(move || {
                std::thread::sleep(d);
                kill9(pid);
            })
        });
        let name = format!("p{round}");
        let reply = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = zlink::tokio::unix::connect(&socket).await.ok()?;
            let call = zlink::Call::new(json!({
                "method": "io.guestlogd.Manager.OpenPipe",
                "parameters": {"name": name},
            }));
            // The kill may cut the call off: no reply then, not a failure.
            let (r, mut fds) = c
                .call_method::<_, serde_json::Value, guestlogd::api::ManagerError>(&call, vec![])
                .await
                .ok()?;
            (r.is_ok() && fds.len() == 1).then(|| fds.remove(0))
        })
        .await
        .ok()
        .flatten();
        match killer {
            Some(k) => k.join().unwrap(),
            None => kill9(pid),
        }
        let old = st.pid;
        st = wait_status(&socket, &format!("round {round}"), |s| s.pid != old).await;
        let Some(fd) = reply else {
            unanswered += 1;
            continue;
        };
        let line = format!("round {round} after the kill\n");
        let mut pipe = std::fs::File::from(fd);
        pipe.write_all(line.as_bytes()).unwrap();
        assert!(
            wait_file(&log.join(format!("{name}.log")), &line),
            "round {round} (kill after {delay:?}): a pipe whose OpenPipe replied was lost"
        );
        kept += 1;
    }
    println!("pipes: {kept} kept across an immediate kill, {unanswered} calls the kill cut off");
    assert!(kept >= 10, "only {kept} rounds got a reply before the kill");

    // Consoles: made, connected to by a guest and a client, then killed.
    for round in 0..10 {
        let name = format!("c{round}");
        let mut c = zlink::tokio::unix::connect(&socket).await.unwrap();
        let created = c
            .create_console(
                &name, None, None, None, None, None, None, None, None, None, None, None, None,
                None, None,
            )
            .await
            .unwrap()
            .unwrap();
        let mut guest = UnixStream::connect(sd.inside(created.guest_socket)).unwrap();
        let mut client = UnixStream::connect(sd.inside(created.client_socket)).unwrap();
        // Once the guest's output reaches the client, both are attached.
        guest.write_all(b"before\n").unwrap();
        assert!(
            wait_read(&mut client, "before"),
            "round {round}: no relay at all"
        );
        kill9(host_pid(&sd, st.pid));
        let old = st.pid;
        st = wait_status(&socket, &format!("console round {round}"), |s| s.pid != old).await;
        guest.write_all(b"after the kill\n").unwrap();
        let seen = read_until(&mut client, "after the kill");
        let seen = seen.unwrap_or_else(|| {
            panic!(
                "console round {round}: the client or the guest was lost\n{}",
                sd.run(&[
                    "journalctl",
                    "-u",
                    "guestlogd.service",
                    "-o",
                    "short-precise",
                    "--no-pager",
                    "-n",
                    "60"
                ])
            )
        });
        // What was queued for it died with the process, and it is told so.
        assert!(
            seen.starts_with(guestlogd::handover::restart::CRASH_MARKER),
            "console round {round}: {seen:?}"
        );
        client.write_all(b"typed\n").unwrap();
        assert!(
            wait_read(&mut guest, "typed"),
            "console round {round}: input lost"
        );
        assert!(wait_file(
            &log.join(format!("{name}.log")),
            "after the kill\n"
        ));
    }
    println!("consoles: 10 of 10 kept their guest, client and log across a kill");
}

/// A crash in the middle of a boot keeps that boot: the successor goes on
/// filling the boot log from where its file is, not from the size the
/// last saved state knew, so the boot log is exactly the first bootBytes
/// of the guest's output, never rotated.
#[tokio::test]
async fn a_crash_mid_boot_keeps_the_boot_log_of_that_boot() {
    if let Some(why) = systemd::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let (sd, socket) = Systemd::with_guestlogd(env!("CARGO_BIN_EXE_guestlogd"));
    let st = wait_status(&socket, "activation", |_| true).await;
    let mut c = zlink::tokio::unix::connect(&socket).await.unwrap();
    let created = create_console(
        &mut c,
        json!({"name": "b", "bootBytes": 8192, "replayBytes": 0}),
    )
    .await;
    let mut guest =
        UnixStream::connect(sd.inside(created["guestSocket"].as_str().unwrap())).unwrap();
    let log = sd.host().join("log");
    // 6,000 bytes of numbered lines, then 6,000 more after the kill.
    let lines: String = (0..480)
        .map(|i| format!("boot line {i:04} .........\n"))
        .collect();
    assert_eq!(lines.len(), 6000 * 2);
    let (first, second) = lines.split_at(6000);
    guest.write_all(first.as_bytes()).unwrap();
    let last_of_first = first.lines().last().unwrap();
    assert!(wait_file(&log.join("b.boot.log"), last_of_first));
    kill9(host_pid(&sd, st.pid));
    let old = st.pid;
    wait_status(&socket, "after the kill", |s| s.pid != old).await;
    guest.write_all(second.as_bytes()).unwrap();
    assert!(wait_file(&log.join("b.log"), lines.lines().last().unwrap()));
    let boot = std::fs::read(log.join("b.boot.log")).unwrap();
    assert!(
        boot == lines.as_bytes()[..8192],
        "the boot log ({} bytes) is not the boot's first 8192 bytes: it begins {:?}",
        boot.len(),
        String::from_utf8_lossy(&boot[..boot.len().min(50)])
    );
    assert!(!log.join("b.boot.log.0").exists());
    let mut c = zlink::tokio::unix::connect(&socket).await.unwrap();
    let listed = c.list_logs().await.unwrap().unwrap();
    let entry = listed.logs.iter().find(|l| l.name == "b.boot").unwrap();
    assert_eq!((entry.size, entry.rotations), (8192, 0), "{entry:?}");
}

/// CreateConsole with `params`, answered.
async fn create_console(
    c: &mut zlink::tokio::unix::Connection,
    params: serde_json::Value,
) -> serde_json::Value {
    let call = zlink::Call::new(json!({
        "method": "io.guestlogd.Manager.CreateConsole",
        "parameters": params,
    }));
    let (reply, _) = c
        .call_method::<_, serde_json::Value, guestlogd::api::ManagerError>(&call, vec![])
        .await
        .unwrap();
    reply.unwrap().into_parameters().unwrap()
}
