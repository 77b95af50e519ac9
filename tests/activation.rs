//! Socket activation and readiness, with systemd's own tools standing in for
//! the service manager.

use std::{
    os::unix::net::{UnixDatagram, UnixStream},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use guestlogd::api::Manager as _;

/// `systemd-socket-activate` binds the socket, names it `varlink` and
/// passes it in `LISTEN_FDS` to a daemon it starts on the first connection.
#[tokio::test]
async fn serves_the_socket_systemd_passes() {
    let Ok(tool) = which("systemd-socket-activate") else {
        eprintln!("SKIPPED: systemd-socket-activate is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let socket = run.join("io.guestlogd.Manager");
    let mut child = Command::new(tool)
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=varlink")
        .arg(env!("CARGO_BIN_EXE_guestlogd"))
        .arg("--runtime-dir")
        .arg(&run)
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the activator never listened");
        sleep(Duration::from_millis(10));
    }
    // The first call starts the daemon, which takes over the socket.
    let mut conn = zlink::tokio::unix::connect(&socket).await.unwrap();
    conn.append_log("vm", "activated").await.unwrap().unwrap();
    let logs = conn.list_logs().await.unwrap().unwrap().logs;
    assert_eq!(logs.len(), 1);
    assert_eq!(
        std::fs::read(dir.path().join("log/vm.log")).unwrap(),
        b"activated\n"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    // A passed socket belongs to the service manager: it stays.
    assert!(socket.exists());
}

/// With `NOTIFY_SOCKET` set, the daemon says `READY=1` once it serves.
#[test]
fn tells_the_service_manager_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guestlogd"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0; 4096];
    let n = listener.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.lines().any(|l| l.starts_with("STATUS=")), "{msg}");
    // It is serving by then.
    assert!(UnixStream::connect(dir.path().join("run/io.guestlogd.Manager")).is_ok());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = listener.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}
