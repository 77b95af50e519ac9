//! guestlogctl: a command line for `io.guestlogd.Manager`.

use std::{
    io::Write,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::ExitCode,
};

use base64::Engine as _;
use clap::{Parser, Subcommand};
use guestlogd::{
    api::{FollowOutput, ListLogsOutput, Manager as _, ManagerError, Position},
    daemon::SOCKET,
    registry::error_chain,
};
use nix::sys::termios::{self, SetArg, Termios};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};
use zlink::{Call, tokio::unix::Connection};

#[derive(Parser, Debug)]
#[command(version, about = "Talk to guestlogd")]
struct Args {
    /// The daemon's runtime directory.
    #[arg(long, default_value = "/run/guestlogd", global = true)]
    runtime_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the logs with their sizes and counters.
    List,
    /// List the consoles.
    Consoles,
    /// Print a log's bytes, oldest backup first, to stdout.
    Read { name: String },
    /// Print the end of a log; with -f, keep printing what is written.
    Tail {
        /// Keep following the log.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last bytes to print first.
        #[arg(short = 'c', long, default_value_t = 16384)]
        bytes: usize,
        name: String,
    },
    /// Rotate a log now.
    Rotate { name: String },
    /// Attach the terminal to a console. Ctrl-] detaches.
    Attach { name: String },
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("cannot reach guestlogd")]
    Connect(#[source] zlink::Error),
    #[error("call failed")]
    Call(#[source] zlink::Error),
    #[error("guestlogd refused: {0:?}")]
    Refused(ManagerError),
    #[error("bad data from guestlogd")]
    Decode(#[source] base64::DecodeError),
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("cannot attach to {path}")]
    Attach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("console connection failed")]
    Console(#[source] std::io::Error),
    #[error("cannot set up the terminal")]
    Terminal(#[source] nix::Error),
}

/// Ctrl-], as virsh console uses.
const ESCAPE: u8 = 0x1d;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guestlogctl: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), CtlError> {
    if let Command::Attach { name } = &args.command {
        let path = args
            .runtime_dir
            .join("consoles")
            .join(format!("{name}.client"));
        return attach(&path, name).await;
    }
    let path = args.runtime_dir.join(SOCKET);
    let mut conn = zlink::tokio::unix::connect(&path)
        .await
        .map_err(CtlError::Connect)?;
    match args.command {
        Command::List => {
            let out = list(&mut conn).await?;
            println!(
                "{:<32} {:>10} {:>10} {:>7} {:>5} {:>12} {:>8} {:>9}",
                "NAME", "SIZE", "MAX", "BACKUPS", "PIPES", "WRITTEN", "DROPPED", "ROTATIONS"
            );
            for l in out.logs {
                println!(
                    "{:<32} {:>10} {:>10} {:>3}/{:<3} {:>5} {:>12} {:>8} {:>9}",
                    l.name,
                    l.size,
                    l.max_size,
                    l.backups,
                    l.max_backups,
                    l.pipes,
                    l.bytes_written,
                    l.bytes_dropped,
                    l.rotations
                );
            }
        }
        Command::Consoles => {
            let out = list(&mut conn).await?;
            println!(
                "{:<32} {:>5} {:>7} {:>7} {:>12} {:>10} {:>9}  LOG",
                "NAME", "GUEST", "CLIENTS", "VIEWERS", "FROM-GUEST", "TO-GUEST", "DROPPED"
            );
            for c in out.consoles {
                println!(
                    "{:<32} {:>5} {:>7} {:>7} {:>12} {:>10} {:>9}  {}",
                    c.name,
                    if c.guest_connected { "yes" } else { "no" },
                    c.clients,
                    c.viewers,
                    c.bytes_from_guest,
                    c.bytes_to_guest,
                    c.bytes_dropped_for_clients,
                    c.log_path.as_deref().unwrap_or("-")
                );
            }
        }
        Command::Read { name } => {
            let mut stdout = std::io::stdout().lock();
            read_log(&mut conn, &name, |data| stdout.write_all(data)).await?;
            stdout.flush().map_err(CtlError::Stdout)?;
        }
        Command::Tail {
            follow: true,
            bytes,
            name,
        } => follow(&mut conn, &name, bytes).await?,
        Command::Tail {
            follow: false,
            bytes,
            name,
        } => {
            // Reads the log through and keeps its end: a log is capped, so
            // this is bounded.
            let mut end = std::collections::VecDeque::with_capacity(bytes);
            read_log(&mut conn, &name, |data| {
                end.extend(data);
                let excess = end.len().saturating_sub(bytes);
                end.drain(..excess);
                Ok(())
            })
            .await?;
            let mut stdout = std::io::stdout().lock();
            let (a, b) = end.as_slices();
            stdout
                .write_all(a)
                .and_then(|()| stdout.write_all(b))
                .and_then(|()| stdout.flush())
                .map_err(CtlError::Stdout)?;
        }
        Command::Rotate { name } => {
            conn.rotate(&name)
                .await
                .map_err(CtlError::Call)?
                .map_err(CtlError::Refused)?;
        }
        Command::Attach { .. } => unreachable!("handled above"),
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ListCall {
    method: &'static str,
}

/// Every log and console, streamed with `more` so that a list of any size
/// arrives in pieces the daemon and we can handle.
async fn list(conn: &mut Connection) -> Result<ListLogsOutput, CtlError> {
    let call = Call::new(ListCall {
        method: "io.guestlogd.Manager.ListLogs",
    })
    .set_more(true);
    conn.send_call(&call, vec![])
        .await
        .map_err(CtlError::Call)?;
    let mut all = ListLogsOutput {
        logs: vec![],
        consoles: vec![],
    };
    loop {
        let (reply, _) = conn
            .receive_reply::<ListLogsOutput, ManagerError>()
            .await
            .map_err(CtlError::Call)?;
        let reply = reply.map_err(CtlError::Refused)?;
        let continues = reply.continues() == Some(true);
        if let Some(page) = reply.into_parameters() {
            all.logs.extend(page.logs);
            all.consoles.extend(page.consoles);
        }
        if !continues {
            return Ok(all);
        }
    }
}

/// Reads a whole log, oldest byte first, handing each chunk to `out`.
async fn read_log(
    conn: &mut Connection,
    name: &str,
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), CtlError> {
    let mut position: Option<Position> = None;
    loop {
        let r = conn
            .read_log(name, position.as_ref(), Some(65536), None)
            .await
            .map_err(CtlError::Call)?
            .map_err(CtlError::Refused)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(r.data)
            .map_err(CtlError::Decode)?;
        out(&data).map_err(CtlError::Stdout)?;
        if r.eof {
            return Ok(());
        }
        position = Some(r.position);
    }
}

#[derive(Debug, Serialize)]
struct FollowCall<'a> {
    method: &'static str,
    parameters: FollowParams<'a>,
}

#[derive(Debug, Serialize)]
struct FollowParams<'a> {
    name: &'a str,
    #[serde(rename = "replayBytes")]
    replay_bytes: usize,
}

/// Prints a log's end, then everything written to it, until interrupted.
async fn follow(conn: &mut Connection, name: &str, replay: usize) -> Result<(), CtlError> {
    let call = Call::new(FollowCall {
        method: "io.guestlogd.Manager.Follow",
        parameters: FollowParams {
            name,
            replay_bytes: replay.min(1 << 20),
        },
    })
    .set_more(true);
    conn.send_call(&call, vec![])
        .await
        .map_err(CtlError::Call)?;
    let mut stdout = std::io::stdout();
    loop {
        let (reply, _) = conn
            .receive_reply::<FollowOutput, ManagerError>()
            .await
            .map_err(CtlError::Call)?;
        let reply = reply.map_err(CtlError::Refused)?;
        let Some(out) = reply.parameters() else {
            continue;
        };
        if out.dropped > 0 {
            eprintln!(
                "guestlogctl: {} bytes dropped (following too slowly)",
                out.dropped
            );
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(out.data)
            .map_err(CtlError::Decode)?;
        stdout
            .write_all(&data)
            .and_then(|()| stdout.flush())
            .map_err(CtlError::Stdout)?;
        if reply.continues() != Some(true) {
            return Ok(());
        }
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

/// Relays the terminal to a console's client socket until Ctrl-], EOF on
/// either side, or SIGTERM/SIGHUP.
async fn attach(path: &Path, name: &str) -> Result<(), CtlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| CtlError::Attach {
            path: path.to_owned(),
            source,
        })?;
    eprintln!("Connected to {name} (escape character is ^])");
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
