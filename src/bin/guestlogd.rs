//! The guestlogd daemon.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use guestlogd::{
    config::Config,
    daemon::{self, Exit, Options},
    error_chain,
    handover::activation::{Activation, own_path, reexec},
};
use tracing::error;
use tracing_subscriber::{EnvFilter, prelude::*};

/// Owns the logs and consoles of virtual machines.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where the varlink socket lives.
    #[arg(long, default_value = "/run/guestlogd")]
    runtime_dir: PathBuf,
    /// Where logs are written.
    #[arg(long, default_value = "/var/log/guestlogd")]
    log_dir: PathBuf,
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // SAFETY: no thread has been started yet.
    let activation = unsafe { Activation::take() };
    let exe = own_path();
    let args = Args::parse();
    init_tracing();
    let activation = match activation {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "bad socket activation environment");
            return ExitCode::FAILURE;
        }
    };
    activation.report();
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            error!(error = %error_chain(&e), "bad configuration");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        runtime_dir: args.runtime_dir,
        log_dir: args.log_dir,
        config,
    };
    match daemon::run(opts, activation) {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Reexec(fds)) => {
            let e = reexec(&exe, fds);
            error!(error = %e, "cannot re-execute guestlogd");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(error = %error_chain(&e), "guestlogd failed");
            ExitCode::FAILURE
        }
    }
}

/// To the journal when stderr is connected to it, or when the journal
/// is there and stderr is not a terminal; to stderr otherwise.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let to_journal = std::env::var_os("JOURNAL_STREAM").is_some()
        || (!std::io::stderr().is_terminal()
            && std::path::Path::new("/run/systemd/journal/socket").exists());
    // Fields keep their own names (no `F_` prefix), so an event's
    // `message_id` is the journal's MESSAGE_ID, which `journalctl -x` and
    // alerts match (src/events.rs).
    let journald = to_journal
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_field_prefix(None));
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}
