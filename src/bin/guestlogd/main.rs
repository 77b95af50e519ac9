//! The guestlogd daemon: its command line (`cli`, or virtlogd's when it
//! runs by virtlogd's name: `virtlogd_cli`), its configuration, taking over
//! from libvirt's virtlogd in its process, and what happens to the process
//! after `daemon::run`: a re-exec of guestlogd, or a hand-back to virtlogd.
//!
//! The order of `main` matters: SIGUSR1, SIGTERM and SIGINT are blocked
//! before anything else (their default actions kill, and with the process
//! every pipe it holds); virtlogd's state is read before anything of ours
//! opens a descriptor; and while that state is not taken over, every
//! failure gives it back to virtlogd instead of exiting.

mod cli;
mod virtlogd_cli;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::Parser;
use cli::{Args, DEFAULT_CONFIG, DEFAULT_VIRTLOGD_CONF};
use guestlogd::{
    config::{Config, virtlogd::VirtlogdConf},
    daemon::{self, Exit, FromVirtlogd, Options},
    error_chain,
    handover::{
        activation::{Activation, block_signals, own_path, reexec},
        virtlogd::{
            handback,
            inherit::{self, Found, Kit, KitHold, PID_FILE},
        },
    },
    logging::events,
};
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, prelude::*};

fn main() -> ExitCode {
    block_signals();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let as_virtlogd = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "virtlogd");
    let found = inherit::find(as_virtlogd);
    // SAFETY: no thread has been started yet.
    let activation = unsafe { Activation::take() };
    let exe = own_path();
    init_tracing();
    // Until it is taken over, virtlogd's state goes back on any failure.
    let give_back = |kit: Kit, why: &str| -> ExitCode {
        error!(
            message_id = events::VIRTLOGD_FALLBACK,
            "giving virtlogd's state back to virtlogd: {why}"
        );
        let e = kit.fall_back(&argv);
        error!("cannot execute libvirt's virtlogd: {e}; its pipes are lost");
        ExitCode::FAILURE
    };
    let state = match found {
        Found::Ours(taken) => Some(taken),
        Found::Unreadable(taken) => {
            return give_back(
                taken.kit(),
                "its state file has no magic guestlogd can read",
            );
        }
        Found::Stale { magic } => {
            warn!(
                magic,
                "found virtlogd's restart file of another process; started fresh"
            );
            None
        }
        Found::Nothing(note) => {
            if let Some(note) = note {
                info!("{note}");
            }
            None
        }
    };
    let (args, pid_file) = match command_line(&argv, as_virtlogd) {
        Ok(parsed) => parsed,
        Err(e) => match state {
            Some(taken) => return give_back(taken.kit(), &format!("its command line: {e}")),
            None if as_virtlogd => {
                error!("virtlogd's command line: {e}");
                return ExitCode::FAILURE;
            }
            None => e.exit(),
        },
    };
    let activation = match activation {
        Ok(a) => a,
        Err(e) => {
            if let Some(taken) = state {
                return give_back(taken.kit(), &format!("its environment: {e}"));
            }
            error!(error = %e, "bad socket activation environment");
            return ExitCode::FAILURE;
        }
    };
    activation.report();
    let config = match load_config(&args, state.is_some() || activation.libvirt.is_some()) {
        Ok(c) => c,
        Err(e) => {
            if let Some(taken) = state {
                return give_back(taken.kit(), &e);
            }
            // In the message itself: the journal shows no other field.
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let from_virtlogd = match state {
        None => None,
        Some(taken) => match taken.adopt(&config.libvirt.roots) {
            Ok((inherited, kit)) => {
                raise_descriptor_limit();
                Some(FromVirtlogd {
                    inherited,
                    kit: Arc::new(KitHold::new(kit, pid_file)),
                })
            }
            Err((kit, e)) => return give_back(kit, &error_chain(&e)),
        },
    };
    let kit = from_virtlogd.as_ref().map(|f| f.kit.clone());
    // guestlogd's own re-exec takes guestlogd's options, even when this
    // start took virtlogd's.
    let again = args.to_argv();
    let opts = Options {
        runtime_dir: args.runtime_dir,
        log_dir: args.log_dir,
        config,
    };
    match daemon::run(opts, activation, from_virtlogd) {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Reexec(fds)) => {
            let e = reexec(&exe, &again, fds);
            error!(error = %e, "cannot re-execute guestlogd");
            ExitCode::FAILURE
        }
        Ok(Exit::HandBack(hb)) => {
            let failed = handback::exec(hb);
            error!(
                "cannot execute libvirt's virtlogd: {}; guestlogd goes on serving",
                failed.error
            );
            let e = reexec(&exe, &again, failed.fds);
            error!(error = %e, "cannot re-execute guestlogd");
            ExitCode::FAILURE
        }
        Err(e) => {
            if let Some(kit) = kit.and_then(|k| k.take()) {
                return give_back(kit, &error_chain(&e));
            }
            error!(error = %error_chain(&e), "guestlogd failed");
            ExitCode::FAILURE
        }
    }
}

/// guestlogd's options and virtlogd's pid file: from guestlogd's command
/// line, or from virtlogd's when it runs by virtlogd's name.
fn command_line(argv: &[OsString], as_virtlogd: bool) -> Result<(Args, PathBuf), CliError> {
    if !as_virtlogd {
        let args = Args::try_parse_from(argv).map_err(CliError::Guestlogd)?;
        return Ok((args, PID_FILE.into()));
    }
    let v = virtlogd_cli::parse(argv).map_err(CliError::Virtlogd)?;
    let mut args = Args::try_parse_from(["guestlogd"]).map_err(CliError::Guestlogd)?;
    args.virtlogd_conf = v.config;
    Ok((args, v.pid_file.unwrap_or_else(|| PID_FILE.into())))
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Guestlogd(clap::Error),
    #[error("{0}")]
    Virtlogd(String),
}

impl CliError {
    /// As clap exits: help and version on stdout with 0, errors with 2.
    fn exit(self) -> ! {
        match self {
            Self::Guestlogd(e) => e.exit(),
            Self::Virtlogd(e) => {
                eprintln!("guestlogd: {e}");
                std::process::exit(2)
            }
        }
    }
}

/// The configuration, and virtlogd.conf's settings when guestlogd serves
/// libvirt (`libvirt`: a socket passed as virtlogd's, or virtlogd's state).
fn load_config(args: &Args, libvirt: bool) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path),
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG)),
        None => Ok(Config::default()),
    }
    .map_err(|e| format!("bad configuration: {}", error_chain(&e)))?;
    // Only a daemon in virtlogd's place has virtlogd's settings to honour.
    if libvirt || config.libvirt.socket.is_some() {
        let (path, required) = match &args.virtlogd_conf {
            Some(p) => (p.as_path(), true),
            None => (Path::new(DEFAULT_VIRTLOGD_CONF), false),
        };
        VirtlogdConf::load(path, required)
            .and_then(|v| match v {
                Some(v) => config.apply_virtlogd(&v, &path.display().to_string()),
                None => Ok(()),
            })
            .map_err(|e| format!("bad virtlogd configuration: {}", error_chain(&e)))?;
    } else if let Some(path) = &args.virtlogd_conf {
        info!(
            "{}: not read, since guestlogd does not serve libvirt's protocol",
            path.display()
        );
    }
    Ok(config)
}

/// virtlogd.service sets a soft limit of 1024 descriptors (virtlogd raises
/// it itself); guestlogd keeps two of each, so it raises it too, up to the
/// hard limit, as systemd recommends.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536).max(soft), hard)
    {
        warn!(error = %e, "cannot raise the descriptor limit");
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
