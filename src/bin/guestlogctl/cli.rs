//! guestlogctl's command line: every verb, its options and its example.
//!
//! It uses nothing but clap and std, so that build.rs can include it and
//! render guestlogctl(1) and the shell completions from the same
//! definitions (each verb's example is its `after_long_help`, shown by
//! `guestlogctl VERB --help` too, and build.rs refuses a verb without one).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "guestlogctl",
    version,
    about = "Talk to guestlogd",
    long_about = "guestlogctl lists, reads and follows the logs guestlogd keeps, manages its \
                  consoles and attaches a terminal to them, over guestlogd's varlink API \
                  (io.guestlogd.Manager). It is also libvirt's QEMU hook for guestlogd's \
                  consoles (the hook verb), and switches a running host from libvirt's \
                  virtlogd to guestlogd and back (replace-virtlogd, restore-virtlogd)."
)]
pub struct Args {
    /// The daemon's runtime directory: its socket is
    /// DIR/io.guestlogd.Manager, its consoles' sockets DIR/consoles/.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/guestlogd",
        global = true
    )]
    pub runtime_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the logs with their sizes and counters.
    #[command(after_long_help = "Example:\n  guestlogctl list")]
    List,
    /// List the consoles.
    #[command(after_long_help = "Example:\n  guestlogctl consoles")]
    Consoles,
    /// Print a log's bytes, oldest backup first, to stdout. On a terminal,
    /// control characters but newline and tab are shown escaped (\xNN),
    /// as journalctl shows them.
    #[command(
        after_long_help = "Examples:\n  guestlogctl read vm1-serial0 > vm1.txt\n  \
                         guestlogctl read /var/log/libvirt/qemu/vm1.log | less"
    )]
    Read {
        /// Print the guest's bytes as they are, even to a terminal.
        #[arg(long)]
        raw: bool,
        /// The log's name, or a libvirt log's path.
        name: String,
    },
    /// Print the end of a log; with -f, keep printing what is written. On a
    /// terminal, control characters are shown escaped, as by read.
    #[command(after_long_help = "Example:\n  guestlogctl tail -f -c 4096 vm1-serial0")]
    Tail {
        /// Keep following the log (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// How many of the last bytes to print first.
        #[arg(short = 'c', long, value_name = "BYTES", default_value_t = 16384)]
        bytes: usize,
        /// Print the guest's bytes as they are, even to a terminal.
        #[arg(long)]
        raw: bool,
        /// The log's name, or a libvirt log's path.
        name: String,
    },
    /// Rotate a log now.
    #[command(after_long_help = "Example:\n  guestlogctl rotate vm1-serial0")]
    Rotate {
        /// The log's name, or a libvirt log's path.
        name: String,
    },
    /// Attach the terminal to a console by its name. Ctrl-] detaches.
    #[command(after_long_help = "Examples:\n  guestlogctl attach vm1-serial0\n  \
                         guestlogctl attach --viewer vm1-serial0\n  \
                         guestlogctl attach --force vm1-serial0")]
    Attach(AttachArgs),
    /// Create a console (see CreateConsole in the interface).
    #[command(
        after_long_help = "Example:\n  guestlogctl create vm3-serial0 --writers one \
                         --boot-bytes 1048576 --owner 64055:64055 --viewers"
    )]
    Create(CreateArgs),
    /// Remove a console; its logs stay.
    #[command(after_long_help = "Example:\n  guestlogctl remove vm3-serial0")]
    Remove {
        /// The console's name.
        name: String,
    },
    /// The daemon's status, or with NAME, one console's.
    #[command(after_long_help = "Examples:\n  guestlogctl status\n  \
                         guestlogctl status vm1-serial0")]
    Status {
        /// A console's name.
        name: Option<String>,
    },
    /// libvirt's QEMU hook: install as /etc/libvirt/hooks/qemu.d/guestlogd.
    #[command(
        after_long_help = "Example (what libvirt runs, the domain XML on stdin):\n  \
                         guestlogctl hook --boot-bytes 1048576 -- vm1 prepare begin - \
                         < vm1.xml"
    )]
    Hook(HookArgs),
    /// Switch this host's log daemon from libvirt's virtlogd to guestlogd,
    /// with its domains running and nothing lost: guestlogd is put at
    /// /usr/sbin/virtlogd (a dpkg diversion, atomically), virtlogd's own
    /// reload (SIGUSR1) executes it in virtlogd's process with every pipe,
    /// and guestlogd then moves onto its own unit settings through its FD
    /// store. Refuses, saying why, when the switch could lose something.
    /// Installs the drop-in and units the package guestlogd-virtlogd would,
    /// when it is not installed. Where virtlogd is not running, it only
    /// installs them. Prints what was adopted; exits 0 once guestlogd
    /// serves with every pipe, non-zero with what happened otherwise.
    #[command(after_long_help = "Example:\n  guestlogctl replace-virtlogd")]
    ReplaceVirtlogd(ReplaceArgs),
    /// Put libvirt's virtlogd back, with the domains running: guestlogd
    /// hands the pipes of libvirt's logs, libvirt's socket and its
    /// connections to the real virtlogd in its own process, and the unit
    /// runs virtlogd's own ExecStart again, with no diversion left.
    /// Consoles and pipes libvirt did not open cannot go to virtlogd: it
    /// refuses, naming them, unless --force. With the package
    /// guestlogd-virtlogd installed, remove the package instead.
    #[command(after_long_help = "Examples:\n  guestlogctl restore-virtlogd\n  \
                         guestlogctl restore-virtlogd --force")]
    RestoreVirtlogd(RestoreArgs),
    /// The daemon's metrics in Prometheus' text format (from its
    /// io.systemd.Metrics socket).
    #[command(after_long_help = "Examples:\n  guestlogctl metrics\n  \
                         guestlogctl metrics --textfile /var/lib/prometheus/node-exporter")]
    Metrics(MetricsArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReplaceArgs {
    /// guestlogd's binary, put in virtlogd's place.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/guestlogd")]
    pub guestlogd: PathBuf,
    /// Seconds each step may take: virtlogd's re-exec into guestlogd, and
    /// guestlogd's restart onto its own settings.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Close the consoles and the pipes libvirt did not open, which
    /// virtlogd cannot take; they are named first.
    #[arg(long)]
    pub force: bool,
    /// Seconds the hand-back may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// The metrics socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/systemd/report/io.guestlogd"
    )]
    pub socket: PathBuf,
    /// Write DIR/guestlogd.prom (atomically) instead of printing.
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// The console's name, e.g. DOMAIN-serial0 for a console the libvirt
    /// hook made (`guestlogctl consoles` lists them).
    pub name: String,
    /// Become the writer now, on a console with one writer; the writer
    /// until now is told and reads only.
    #[arg(long)]
    pub force: bool,
    /// Attach read-only.
    #[arg(long)]
    pub viewer: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SlowClient {
    Drop,
    Disconnect,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WritersArg {
    All,
    One,
}

impl WritersArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::One => "one",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The console's name; QEMU connects to RUNDIR/consoles/NAME.guest.
    pub name: String,
    /// Keep no log of the guest's output.
    #[arg(long)]
    pub no_log: bool,
    /// The log's cap in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,
    /// The log's backups.
    #[arg(long, value_name = "N")]
    pub max_backups: Option<u32>,
    /// Bytes of the latest output a client gets when it attaches.
    #[arg(long, value_name = "BYTES")]
    pub replay_bytes: Option<u64>,
    /// What happens to a client that reads too slowly.
    #[arg(long, value_enum)]
    pub slow_client: Option<SlowClient>,
    /// The sockets' owner, UID or UID:GID (QEMU's user).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_owner)]
    pub owner: Option<(u32, Option<u32>)>,
    /// The sockets' mode, in octal.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Also listen on NAME.view for read-only watchers.
    #[arg(long)]
    pub viewers: bool,
    /// "one": one client writes at a time (attach --force takes over).
    #[arg(long, value_enum)]
    pub writers: Option<WritersArg>,
    /// Keep the first N bytes after each guest connection in NAME.boot.log.
    #[arg(long, value_name = "N")]
    pub boot_bytes: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct HookArgs {
    /// The domain's name (libvirt's first argument).
    #[arg(allow_hyphen_values = true)]
    pub domain: String,
    /// libvirt's operation: prepare, start, started, stopped, release, ...
    pub operation: String,
    /// libvirt's sub-operation: begin or end.
    pub subop: String,
    /// libvirt's extra argument: at "release end", why the domain went
    /// ("migrated" tells the consoles' clients); "-" otherwise.
    pub extra: Option<String>,
    /// Bytes of each boot kept in NAME.boot.log; 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 1024 * 1024)]
    pub boot_bytes: u64,
    /// Who may type on the consoles.
    #[arg(long, value_enum, default_value = "all")]
    pub writers: WritersArg,
    /// No NAME.view socket for read-only watchers.
    #[arg(long)]
    pub no_viewers: bool,
    /// The sockets' owner, UID:GID, instead of QEMU's user.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_owner)]
    pub owner: Option<(u32, Option<u32>)>,
    /// Where QEMU's default user and group are read from.
    #[arg(long, value_name = "FILE", default_value = "/etc/libvirt/qemu.conf")]
    pub qemu_conf: PathBuf,
    /// Seconds the whole hook may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
    /// The most consoles one domain may have.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_consoles: usize,
    /// The consoles' rate limit, bytes a second (none unless the daemon's
    /// [log] max-rate sets one): a guest over it is read slower.
    #[arg(long, value_name = "BYTES")]
    pub max_rate: Option<u64>,
    /// The bytes a console's guest may send at once beyond its rate.
    #[arg(long, value_name = "BYTES")]
    pub max_burst: Option<u64>,
    /// Export the consoles' logs to the journal, with the domain's name
    /// and UUID (VM_NAME, VM_UUID).
    #[arg(long)]
    pub journal: bool,
}

pub fn parse_owner(s: &str) -> Result<(u32, Option<u32>), String> {
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((number(u)?, Some(number(g)?))),
        None => Ok((number(s)?, None)),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not a mode from 0 to 777 (octal)")),
    }
}
