//! guestlogd's command line.
//!
//! It uses nothing but clap and std, so that build.rs can include it and
//! render guestlogd(8) and the shell completions from the same definitions.

use std::path::PathBuf;

use clap::Parser;

/// Where guestlogd reads its configuration when `--config` is not given;
/// a missing file there means the defaults.
pub const DEFAULT_CONFIG: &str = "/etc/guestlogd/guestlogd.conf";
/// Where libvirt's log daemon reads its configuration; guestlogd reads it
/// too when it serves libvirt in virtlogd's place.
pub const DEFAULT_VIRTLOGD_CONF: &str = "/etc/libvirt/virtlogd.conf";

#[derive(Parser, Debug)]
#[command(
    name = "guestlogd",
    version,
    about = "Owns the logs and serial consoles of virtual machines",
    long_about = "guestlogd writes the logs of virtual machines into files it caps and \
                  rotates itself, and relays their serial consoles to any number of clients \
                  while logging them. Callers reach it over varlink (io.guestlogd.Manager) \
                  and, in virtlogd's place, over libvirt's log protocol. Every descriptor \
                  that must outlive the process is kept in systemd's FD store or handed to \
                  a re-executed successor, so restarts and upgrades lose nothing."
)]
pub struct Args {
    /// Where the varlink socket, the consoles' sockets and the saved state
    /// live.
    #[arg(long, value_name = "DIR", default_value = "/run/guestlogd")]
    pub runtime_dir: PathBuf,
    /// Where logs are written, unless libvirt names a log by its path.
    #[arg(long, value_name = "DIR", default_value = "/var/log/guestlogd")]
    pub log_dir: PathBuf,
    /// The configuration, TOML (guestlogd.conf(5)). Without this option,
    /// /etc/guestlogd/guestlogd.conf if it exists, else the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// libvirt's virtlogd.conf, read when guestlogd serves libvirt's
    /// protocol: its max_size, max_backups and max_clients apply where the
    /// configuration does not set them. Without this option,
    /// /etc/libvirt/virtlogd.conf if it exists.
    #[arg(long, value_name = "FILE")]
    pub virtlogd_conf: Option<PathBuf>,
}

impl Args {
    /// The arguments (argv[1..]) that give these options again: what a
    /// re-exec of guestlogd passes on, even when this start read
    /// virtlogd's command line.
    pub fn to_argv(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = vec![
            "--runtime-dir".into(),
            self.runtime_dir.clone().into(),
            "--log-dir".into(),
            self.log_dir.clone().into(),
        ];
        for (flag, value) in [
            ("--config", &self.config),
            ("--virtlogd-conf", &self.virtlogd_conf),
        ] {
            if let Some(v) = value {
                out.push(flag.into());
                out.push(v.clone().into());
            }
        }
        out
    }
}
