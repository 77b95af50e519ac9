//! guestlogctl: a command line for `io.guestlogd.Manager`, and libvirt's
//! QEMU hook for guestlogd's consoles.
//!
//! `cli` is the command line (build.rs renders guestlogctl(1) from it);
//! `main` has the log commands; `consoles` creates, removes and shows
//! consoles; `attach` puts a terminal on one; `hook` is the libvirt hook
//! (`guestlogctl hook DOMAIN OPERATION SUBOP EXTRA`, the domain XML on
//! stdin); `switch` switches the host from virtlogd to guestlogd and back.

mod attach;
mod cli;
mod consoles;
mod escape;
mod hook;
mod metrics;
mod switch;

use std::{io::Write, path::PathBuf, process::ExitCode};

use base64::Engine as _;
use clap::Parser;
use guestlogd::{
    api::{FollowOutput, ListLogsOutput, Manager as _, ManagerError, Position},
    daemon::SOCKET,
    error_chain,
};
use serde::Serialize;
use zlink::{Call, tokio::unix::Connection};

use cli::{Args, Command};

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
    #[error("guestlogd passed no connection")]
    NoFd,
    #[error(transparent)]
    Hook(#[from] hook::HookError),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Switch(#[from] switch::SwitchError),
    #[error("cannot write {path}")]
    Textfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let code = match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("guestlogctl: {}", error_chain(&e));
            1
        }
    };
    // Without waiting for a blocking stdin read (the hook's, attach's) that
    // may never end: everything printed was flushed.
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

async fn run(args: Args) -> Result<(), CtlError> {
    match args.command {
        Command::Attach(a) => return attach::attach(&args.runtime_dir, a).await,
        Command::Hook(h) => return Ok(hook::run(&args.runtime_dir, h).await?),
        Command::Metrics(m) => return metrics::run(m).await,
        Command::ReplaceVirtlogd(r) => return Ok(switch::replace(&args.runtime_dir, r).await?),
        Command::RestoreVirtlogd(r) => return Ok(switch::restore(&args.runtime_dir, r).await?),
        _ => {}
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
                "{:<32} {:<24} {:>5} {:>7} {:>7} {:>7} {:>12} {:>10} {:>9}  LOG",
                "NAME",
                "DOMAIN",
                "GUEST",
                "CLIENTS",
                "VIEWERS",
                "WRITERS",
                "FROM-GUEST",
                "TO-GUEST",
                "DROPPED"
            );
            for c in out.consoles {
                println!(
                    "{:<32} {:<24} {:>5} {:>7} {:>7} {:>7} {:>12} {:>10} {:>9}  {}",
                    c.name,
                    c.domain.as_ref().map_or("-", |d| d.name.as_str()),
                    if c.guest_connected { "yes" } else { "no" },
                    c.clients,
                    c.viewers,
                    c.writers,
                    c.bytes_from_guest,
                    c.bytes_to_guest,
                    c.bytes_dropped_for_clients,
                    c.log_path.as_deref().unwrap_or("-")
                );
            }
        }
        Command::Read { raw, name } => {
            let mut out = escape::Output::stdout(raw);
            read_log(&mut conn, &name, |data| out.write(data)).await?;
            out.finish().map_err(CtlError::Stdout)?;
        }
        Command::Tail {
            follow: true,
            bytes,
            raw,
            name,
        } => follow(&mut conn, &name, bytes, escape::Output::stdout(raw)).await?,
        Command::Tail {
            follow: false,
            bytes,
            raw,
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
            let mut out = escape::Output::stdout(raw);
            let (a, b) = end.as_slices();
            out.write(a)
                .and_then(|()| out.write(b))
                .and_then(|()| out.finish())
                .map_err(CtlError::Stdout)?;
        }
        Command::Rotate { name } => {
            conn.rotate(&name)
                .await
                .map_err(CtlError::Call)?
                .map_err(CtlError::Refused)?;
        }
        Command::Create(c) => consoles::create(&mut conn, c).await?,
        Command::Remove { name } => consoles::remove(&mut conn, &name).await?,
        Command::Status { name: None } => consoles::daemon_status(&mut conn).await?,
        Command::Status { name: Some(name) } => {
            let all = list(&mut conn).await?;
            consoles::console_status(all, &name)?;
        }
        Command::Attach(_)
        | Command::Hook(_)
        | Command::Metrics(_)
        | Command::ReplaceVirtlogd(_)
        | Command::RestoreVirtlogd(_) => {}
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct RawCall<'a> {
    method: String,
    parameters: &'a serde_json::Value,
}

/// Calls a method with JSON parameters; its reply and the FDs it passed.
async fn call(
    conn: &mut Connection,
    method: &str,
    parameters: serde_json::Value,
) -> Result<(serde_json::Value, Vec<std::os::fd::OwnedFd>), CtlError> {
    let call = Call::new(RawCall {
        method: format!("io.guestlogd.Manager.{method}"),
        parameters: &parameters,
    });
    let (reply, fds) = conn
        .call_method::<_, serde_json::Value, ManagerError>(&call, vec![])
        .await
        .map_err(CtlError::Call)?;
    let reply = reply.map_err(CtlError::Refused)?;
    Ok((reply.into_parameters().unwrap_or_default(), fds))
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
async fn follow(
    conn: &mut Connection,
    name: &str,
    replay: usize,
    mut stdout: escape::Output,
) -> Result<(), CtlError> {
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
        stdout.write(&data).map_err(CtlError::Stdout)?;
        if reply.continues() != Some(true) {
            stdout.finish().map_err(CtlError::Stdout)?;
            if let Some(ended) = out.ended {
                eprintln!("guestlogctl: {name}: {ended}");
            }
            return Ok(());
        }
    }
}
