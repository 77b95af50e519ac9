//! Starts the real `guestlogd` binary on a temporary directory.
#![allow(dead_code)]

use std::{
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// Where the test environment (tests/env/setup.sh) puts its tools.
pub const TEST_CACHE: &str = "/var/cache/guestlogd-test";

/// A running daemon, killed when dropped.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon with `config` (TOML; may be empty) and waits until
    /// its socket accepts connections.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, |_| {})
    }

    /// Like `start`, with `prepare` run on the directory first.
    pub fn start_with(config: &str, prepare: impl FnOnce(&Path)) -> Self {
        Self::start_args(config, |dir| {
            prepare(dir);
            vec![]
        })
    }

    /// Like `start_with`, where `prepare` also gives more arguments.
    pub fn start_args(config: &str, prepare: impl FnOnce(&Path) -> Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("guestlogd-test")
            .tempdir()
            .unwrap();
        let args = prepare(dir.path());
        // Other uids (the access tests) must reach the socket's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config_path = dir.path().join("guestlogd.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_guestlogd"))
            .arg("--runtime-dir")
            .arg(dir.path().join("run"))
            .arg("--log-dir")
            .arg(dir.path().join("log"))
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.stderr")).unwrap())
            .spawn()
            .unwrap();
        let d = Self {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(d.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                d.stderr()
            );
            sleep(Duration::from_millis(10));
        }
        d
    }

    /// The varlink socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/io.guestlogd.Manager")
    }

    /// The address as varlinkctl and the Python clients spell it.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What the daemon logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.stderr")).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the daemon's log says `what`: the socket
    /// may answer before the lines written just before "ready" are read.
    pub fn wait_stderr(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.stderr();
            if text.contains(what) || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Panics if the daemon has exited.
    pub fn assert_alive(&mut self) {
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "daemon exited: {status:?}\n{}",
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends one raw varlink message (a NUL is appended) and returns the raw
/// reply without its NUL, or `None` if the daemon closed the connection.
pub fn raw_call(socket: &Path, message: &[u8]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut msg = message.to_vec();
    msg.push(0);
    // The daemon may close early on an oversized message.
    let _ = s.write_all(&msg);
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&0) {
                    break;
                }
            }
        }
    }
    let end = reply.iter().position(|b| *b == 0)?;
    Some(String::from_utf8(reply[..end].to_vec()).unwrap())
}

/// A tool from the test environment, or the reason it is missing. Callers
/// print `SKIPPED: <reason>` and return.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let unavailable = Path::new(TEST_CACHE).join(format!("{name}.unavailable"));
    if let Ok(why) = std::fs::read_to_string(&unavailable) {
        return Err(format!("{name} unavailable: {}", why.trim()));
    }
    let path = match name {
        "python" => Path::new(TEST_CACHE).join("venv/bin/python"),
        _ => Path::new(TEST_CACHE).join("bin").join(name),
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing; run tests/env/setup.sh",
            path.display()
        ))
    }
}

#[derive(Debug, serde::Serialize)]
struct RawCall<'a> {
    method: String,
    parameters: &'a serde_json::Value,
}

/// Calls an `io.guestlogd.Manager` method with raw JSON parameters and
/// returns the reply (an error reply is `Err`) with the FDs it passed.
pub async fn call_with_fds(
    conn: &mut zlink::tokio::unix::Connection,
    method: &str,
    parameters: serde_json::Value,
) -> (
    Result<serde_json::Value, guestlogd::api::ManagerError>,
    Vec<std::os::fd::OwnedFd>,
) {
    let call = zlink::Call::new(RawCall {
        method: format!("io.guestlogd.Manager.{method}"),
        parameters: &parameters,
    });
    let (reply, fds) = conn
        .call_method::<_, serde_json::Value, guestlogd::api::ManagerError>(&call, vec![])
        .await
        .unwrap();
    let reply = reply.map(|r| r.into_parameters().unwrap_or(serde_json::Value::Null));
    (reply, fds)
}

/// `call_with_fds` for methods that pass no FDs.
pub async fn call(
    conn: &mut zlink::tokio::unix::Connection,
    method: &str,
    parameters: serde_json::Value,
) -> Result<serde_json::Value, guestlogd::api::ManagerError> {
    call_with_fds(conn, method, parameters).await.0
}

/// Reads from `s` until `want` has arrived; what arrived.
pub fn read_until(s: &mut UnixStream, want: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut got, mut buf) = (Vec::new(), [0u8; 65536]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.windows(want.len()).any(|w| w == want) {
        assert!(
            Instant::now() < deadline,
            "never got {:?}; got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got[got.len().saturating_sub(300)..])
        );
        match std::io::Read::read(s, &mut buf) {
            Ok(0) => panic!("closed before {:?}", String::from_utf8_lossy(want)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    got
}
