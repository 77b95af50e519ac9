//! guestlogctl: a command line for `io.guestlogd.Manager`.

use std::{io::Write, path::PathBuf, process::ExitCode};

use base64::Engine as _;
use clap::{Parser, Subcommand};
use guestlogd::{
    api::{Manager as _, ManagerError, Position},
    daemon::SOCKET,
};

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
    /// Print a log's bytes, oldest backup first, to stdout.
    Read { name: String },
    /// Rotate a log now.
    Rotate { name: String },
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("guestlogctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), CtlError> {
    let path = args.runtime_dir.join(SOCKET);
    let mut conn = zlink::tokio::unix::connect(&path)
        .await
        .map_err(CtlError::Connect)?;
    match args.command {
        Command::List => {
            let out = conn
                .list_logs()
                .await
                .map_err(CtlError::Call)?
                .map_err(CtlError::Refused)?;
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
        Command::Read { name } => {
            let mut stdout = std::io::stdout().lock();
            let mut position: Option<Position> = None;
            loop {
                let out = conn
                    .read_log(&name, position.as_ref(), Some(65536), None)
                    .await
                    .map_err(CtlError::Call)?
                    .map_err(CtlError::Refused)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(out.data)
                    .map_err(CtlError::Decode)?;
                stdout.write_all(&data).map_err(CtlError::Stdout)?;
                if out.eof {
                    break;
                }
                position = Some(out.position);
            }
            stdout.flush().map_err(CtlError::Stdout)?;
        }
        Command::Rotate { name } => {
            conn.rotate(&name)
                .await
                .map_err(CtlError::Call)?
                .map_err(CtlError::Refused)?;
        }
    }
    Ok(())
}
