//! `guestlogctl attach NAME`: the terminal on a console, raw, until Ctrl-].
//!
//! The connection comes from AttachConsole, by the console's name: the
//! daemon passes a connected socket and knows who asked (SO_PEERCRED), so
//! `--force` can take the writer's place on a console with one writer. A
//! caller the daemon does not let call (no varlink access) but who may
//! reach the console's own sockets is connected to NAME.client (or
//! NAME.view) directly instead.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use guestlogd::{api::ManagerError, daemon::SOCKET, error_chain};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::{CtlError, cli::AttachArgs};

/// Ctrl-], as virsh console uses.
const ESCAPE: u8 = 0x1d;

/// Asks the daemon for a connection to the console, or falls back to the
/// console's socket when the daemon refuses the caller.
async fn connect(runtime_dir: &Path, a: &AttachArgs) -> Result<(UnixStream, bool), CtlError> {
    let mut conn = zlink::tokio::unix::connect(runtime_dir.join(SOCKET))
        .await
        .map_err(CtlError::Connect)?;
    let params = serde_json::json!({"name": a.name, "viewer": a.viewer, "force": a.force});
    match crate::call(&mut conn, "AttachConsole", params).await {
        Ok((reply, fds)) => {
            let fd = fds.into_iter().next().ok_or(CtlError::NoFd)?;
            let std = std::os::unix::net::UnixStream::from(fd);
            let console = |source| CtlError::Console(source);
            std.set_nonblocking(true).map_err(console)?;
            let stream = UnixStream::from_std(std).map_err(console)?;
            Ok((stream, reply["writer"].as_bool().unwrap_or(false)))
        }
        Err(CtlError::Refused(ManagerError::PermissionDenied { .. })) if !a.force => {
            let kind = if a.viewer { "view" } else { "client" };
            let path: PathBuf = runtime_dir
                .join("consoles")
                .join(format!("{}.{kind}", a.name));
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|source| CtlError::Attach { path, source })?;
            Ok((stream, !a.viewer))
        }
        Err(e) => Err(e),
    }
}

/// Relays the terminal to a console until Ctrl-], EOF on either side, or
/// SIGTERM/SIGHUP.
pub async fn attach(runtime_dir: &Path, a: AttachArgs) -> Result<(), CtlError> {
    let (stream, writer) = connect(runtime_dir, &a).await?;
    let name = &a.name;
    if writer {
        eprintln!("Connected to {name} (escape character is ^])");
    } else {
        eprintln!("Connected to {name}, read-only (escape character is ^])");
    }
    let result = {
        let _raw = RawMode::enter(std::io::stdin())?;
        relay_terminal(stream).await
    };
    eprintln!();
    // The blocking stdin reader may still wait for a key; the terminal is
    // restored, so leave without waiting for it.
    let code = match &result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("guestlogctl: {}", error_chain(e));
            1
        }
    };
    std::process::exit(code)
}

async fn relay_terminal(stream: UnixStream) -> Result<(), CtlError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut from_console, mut to_console) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut term = signal(SignalKind::terminate()).map_err(CtlError::Console)?;
    let mut hup = signal(SignalKind::hangup()).map_err(CtlError::Console)?;
    let mut keys = [0u8; 1024];
    let mut output = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => return Ok(()),
            n = stdin.read(&mut keys) => {
                let n = n.map_err(CtlError::Console)?;
                if n == 0 {
                    // No more input; keep showing output until the console ends.
                    let _ = to_console.shutdown().await;
                    return copy_rest(&mut from_console, &mut stdout, &mut output).await;
                }
                let keys = &keys[..n];
                let (send, detach) = match keys.iter().position(|k| *k == ESCAPE) {
                    Some(i) => (&keys[..i], true),
                    None => (keys, false),
                };
                to_console.write_all(send).await.map_err(CtlError::Console)?;
                if detach {
                    return Ok(());
                }
            }
            n = from_console.read(&mut output) => {
                let n = n.map_err(CtlError::Console)?;
                if n == 0 {
                    return Ok(());
                }
                stdout.write_all(&output[..n]).await.map_err(CtlError::Console)?;
                stdout.flush().await.map_err(CtlError::Console)?;
            }
        }
    }
}

async fn copy_rest(
    from: &mut tokio::net::unix::OwnedReadHalf,
    to: &mut tokio::io::Stdout,
    buf: &mut [u8],
) -> Result<(), CtlError> {
    loop {
        let n = from.read(buf).await.map_err(CtlError::Console)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await.map_err(CtlError::Console)?;
        to.flush().await.map_err(CtlError::Console)?;
    }
}

/// Puts a terminal in raw mode and restores it when dropped, on every way
/// out of `attach`, a panic included.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter(fd: impl AsFd) -> Result<Option<Self>, CtlError> {
        let saved = match termios::tcgetattr(&fd) {
            Ok(t) => t,
            // Not a terminal (a pipe, a test): nothing to change.
            Err(nix::Error::ENOTTY) => return Ok(None),
            Err(e) => return Err(CtlError::Terminal(e)),
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw).map_err(CtlError::Terminal)?;
        Ok(Some(Self { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
