//! The guestlogd daemon: its command line (`cli`), its configuration, and
//! what happens to the process after `daemon::run`.

mod cli;

use std::{path::Path, process::ExitCode};

use clap::Parser;
use cli::{Args, DEFAULT_CONFIG, DEFAULT_VIRTLOGD_CONF};
use guestlogd::{
    config::{Config, virtlogd::VirtlogdConf},
    daemon::{self, Exit, Options},
    error_chain,
    handover::activation::{Activation, own_path, reexec},
};
use tracing::{error, info};
use tracing_subscriber::{EnvFilter, prelude::*};

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
    let mut config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            // In the message itself: the journal shows no other field.
            error!("bad configuration: {}", error_chain(&*e));
            return ExitCode::FAILURE;
        }
    };
    // Only a daemon in virtlogd's place has virtlogd's settings to honour.
    if activation.libvirt.is_some() || config.libvirt.socket.is_some() {
        let (path, required) = match &args.virtlogd_conf {
            Some(p) => (p.as_path(), true),
            None => (Path::new(DEFAULT_VIRTLOGD_CONF), false),
        };
        let applied = VirtlogdConf::load(path, required).and_then(|v| match v {
            Some(v) => config.apply_virtlogd(&v, &path.display().to_string()),
            None => Ok(()),
        });
        if let Err(e) = applied {
            error!("bad virtlogd configuration: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    } else if let Some(path) = &args.virtlogd_conf {
        info!(
            "{}: not read, since guestlogd does not serve libvirt's protocol",
            path.display()
        );
    }
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

/// The configuration `--config` names, else the default file if it exists,
/// else the defaults.
fn load_config(args: &Args) -> Result<Config, Box<guestlogd::config::ConfigError>> {
    match &args.config {
        Some(path) => Config::load(path).map_err(Box::new),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG)).map_err(Box::new)
        }
        None => Ok(Config::default()),
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
