//! `Config`: the daemon's TOML configuration, validated once at start.
//!
//! Every key is optional; a missing file section takes the defaults below.
//! Unknown keys are refused, so a typo cannot silently weaken a limit. It
//! serializes too, so that tests can list every key (guestlogd.conf(5)).
//! `virtlogd` reads libvirt's `virtlogd.conf`, whose settings fill in what
//! this configuration leaves unset for the libvirt front
//! (`Config::apply_virtlogd`).

pub mod budget;
pub mod virtlogd;

use std::{fs, path::Path};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use virtlogd::{VirtlogdConf, VirtlogdConfError};

use crate::logs::{
    name::LogName,
    policy::{self, Policy},
};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The policy of a log created without one.
    pub log: LogDefaults,
    pub limits: Limits,
    pub socket: SocketConfig,
    pub access: Access,
    /// libvirt's log protocol, served in virtlogd's place.
    pub libvirt: Libvirt,
    /// What all logs together may take of the disk.
    pub disk: Disk,
    /// The `io.systemd.Metrics` socket.
    pub metrics: Metrics,
    /// Export of logs to the journal.
    pub journal: JournalConfig,
}

/// A host-wide budget for the logs' files (`logs::vacuum`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Disk {
    /// Bytes over all files of all logs; 0 is no budget.
    pub max_use: u64,
    /// Bytes to leave free on each file system that holds logs; 0 is none.
    pub keep_free: u64,
}

/// The metrics socket, when systemd does not pass one
/// (`guestlogd-metrics.socket`, FD name `varlink-metrics`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Metrics {
    /// A path to bind; none serves metrics only under activation.
    pub socket: Option<std::path::PathBuf>,
    /// Octal, as in chmod. Anyone may read the metrics by default, as
    /// systemd's own metrics sockets let them.
    pub mode: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            socket: None,
            mode: "0666".into(),
        }
    }
}

/// Journal export: the per-log line budget, and journald's socket.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct JournalConfig {
    /// Lines per second each exporting log may send on average; 0 sends
    /// every line.
    pub max_lines_per_second: u32,
    /// Lines a quiet log may send at once, above the rate.
    pub max_burst: u32,
    /// journald's native socket.
    pub socket: std::path::PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            max_lines_per_second: 200,
            max_burst: 2000,
            socket: "/run/systemd/journal/socket".into(),
        }
    }
}

/// The libvirt front: where it listens without socket activation, which
/// directories its logs may live in, their policy and its connections.
/// The last three, unset here, come from virtlogd.conf when it sets them,
/// else from libvirt's defaults (`policy`, `max_clients`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Libvirt {
    /// A socket path to bind when systemd passes none named
    /// `virtlogd.socket`; none serves the front only under activation.
    pub socket: Option<std::path::PathBuf>,
    /// Absolute directories under which libvirt may name logs.
    pub roots: Vec<std::path::PathBuf>,
    /// The cap of a log this front creates, in bytes.
    pub max_size: Option<u64>,
    /// The backups such a log keeps.
    pub max_backups: Option<u32>,
    /// Connections libvirt may hold at once; unset, `limits.max-connections`.
    pub max_clients: Option<usize>,
    /// Its rate limit, in bytes a second (0: none), and its burst.
    pub max_rate: u64,
    pub max_burst: u64,
    /// Export every log this front opens to the journal, with the
    /// domain's name and UUID.
    pub journal: bool,
}

impl Default for Libvirt {
    fn default() -> Self {
        Self {
            socket: None,
            roots: vec!["/var/log/libvirt".into(), "/run/libvirt".into()],
            max_size: None,
            max_backups: None,
            max_clients: None,
            max_rate: 0,
            max_burst: 0,
            journal: false,
        }
    }
}

impl Libvirt {
    /// The policy of the logs this front creates: libvirt's own defaults
    /// for what is unset.
    pub fn policy(&self) -> Policy {
        let d = Policy::default();
        Policy {
            max_size: self.max_size.unwrap_or(d.max_size),
            max_backups: self.max_backups.unwrap_or(d.max_backups),
            max_rate: self.max_rate,
            max_burst: self.max_burst,
        }
    }

    /// The most connections the front serves at once.
    pub fn max_clients(&self, limits: &Limits) -> usize {
        self.max_clients.unwrap_or(limits.max_connections)
    }
}

/// The default policy, and how long logs no one uses are kept.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct LogDefaults {
    pub max_size: u64,
    pub max_backups: u32,
    /// Bytes a second a log takes on average; 0 is no limit.
    pub max_rate: u64,
    /// Bytes a log takes at once beyond its rate.
    pub max_burst: u64,
    /// Logs whose newest file is older than this many days, and that no one
    /// uses, are removed (`logs::vacuum`); 0 keeps them for ever. Unset:
    /// virtlogd.conf's `max_age_days` when guestlogd serves libvirt, else 0.
    pub max_age_days: Option<u64>,
}

impl Default for LogDefaults {
    fn default() -> Self {
        let p = Policy::default();
        Self {
            max_size: p.max_size,
            max_backups: p.max_backups,
            max_rate: 0,
            max_burst: 0,
            max_age_days: None,
        }
    }
}

impl LogDefaults {
    pub fn policy(&self) -> Policy {
        Policy {
            max_size: self.max_size,
            max_backups: self.max_backups,
            max_rate: self.max_rate,
            max_burst: self.max_burst,
        }
    }
}

/// Limits that bound what callers can make the daemon hold.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Limits {
    /// Open pipes, over all logs.
    pub max_pipes: usize,
    /// Logs the daemon remembers (their figures and policy). Past it, the
    /// least recently used that no one uses are forgotten; their files
    /// stay. When every one is in use, a new log is refused.
    pub max_logs: usize,
    /// Concurrent varlink connections.
    pub max_connections: usize,
    /// The largest varlink message a caller may send, in bytes.
    pub max_message_size: usize,
    /// Consoles, over all guests.
    pub max_consoles: usize,
    /// Clients per console, and separately viewers per console.
    pub max_clients: usize,
    /// Console clients, viewers and Follow streams over the whole host:
    /// what bounds their descriptors and queues, rather than every
    /// console being full.
    pub max_clients_total: usize,
    /// Output queued for one console client or follower before the
    /// slow-client policy applies, in bytes.
    pub client_queue: usize,
    /// Varlink connections one uid may hold at once; root is exempt, so
    /// one local user cannot take every slot.
    pub max_connections_per_uid: usize,
    /// Slots of `max_connections` that only uid 0 may take, so that however
    /// many uids hold connections, libvirt and its hook (root) are served.
    /// Unset: a sixteenth of `max_connections`, at most 16.
    pub root_connections: Option<usize>,
    /// Seconds a varlink connection may sit with no call in progress
    /// before it is closed; 0 never closes an idle connection.
    pub idle_timeout: u64,
    /// Seconds a message may take to arrive, from its first byte.
    pub message_timeout: u64,
    /// Seconds a reply may wait for the caller to read any of it; past
    /// that the caller is taken to be stuck and its connection is closed.
    pub write_timeout: u64,
}

impl Limits {
    /// The slots only root may take.
    pub fn root_reserve(&self) -> usize {
        self.root_connections
            .unwrap_or((self.max_connections / 16).min(16))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pipes: 4096,
            max_logs: 8192,
            max_connections: 256,
            max_message_size: 1024 * 1024,
            max_consoles: 4096,
            max_clients: 16,
            max_clients_total: 8192,
            client_queue: 256 * 1024,
            max_connections_per_uid: 64,
            root_connections: None,
            idle_timeout: 600,
            message_timeout: 5,
            write_timeout: 30,
        }
    }
}

/// The varlink socket's file mode and group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// Octal, as in chmod: "0600".
    pub mode: String,
    /// A group name or number to own the socket; none keeps the daemon's.
    pub group: Option<String>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            mode: "0600".into(),
            group: None,
        }
    }
}

/// Who may call, beyond uid 0 and the daemon's own uid.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    pub uids: Vec<u32>,
    /// A caller whose primary or supplementary groups include one of these.
    pub gids: Vec<u32>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates a configuration's text; `shown` names it in
    /// errors.
    pub fn parse(text: &str, shown: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: shown.to_owned(),
            source,
        })?;
        config.validate().map_err(|what| ConfigError::Invalid {
            path: shown.to_owned(),
            what,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let p = self.log.policy();
        check_policy_size(i64::try_from(p.max_size).unwrap_or(i64::MAX))
            .map_err(|why| format!("log.max-size {why}"))?;
        check_policy_backups(p.max_backups.into())
            .map_err(|why| format!("log.max-backups {why}"))?;
        let l = &self.limits;
        if [
            l.max_pipes,
            l.max_logs,
            l.max_connections,
            l.max_consoles,
            l.max_clients,
            l.max_clients_total,
            l.max_connections_per_uid,
        ]
        .contains(&0)
        {
            return Err(
                "limits: max-pipes, max-logs, max-connections, max-connections-per-uid, \
                 max-consoles, max-clients and max-clients-total must be at least 1"
                    .into(),
            );
        }
        if l.root_connections.is_some_and(|n| n >= l.max_connections) {
            return Err("limits.root-connections must be less than max-connections".into());
        }
        if !(1..=3600).contains(&l.message_timeout) || !(1..=3600).contains(&l.write_timeout) {
            return Err(
                "limits: message-timeout and write-timeout must be from 1 to 3600 seconds".into(),
            );
        }
        if !(4096..=64 << 20).contains(&l.client_queue) {
            return Err("limits.client-queue must be from 4096 to 67108864".into());
        }
        if !(4096..=MAX_MESSAGE_SIZE).contains(&l.max_message_size) {
            return Err(format!(
                "limits.max-message-size must be from 4096 to {MAX_MESSAGE_SIZE}"
            ));
        }
        let v = &self.libvirt;
        for (key, value) in [
            ("log.max-rate", self.log.max_rate),
            ("log.max-burst", self.log.max_burst),
            ("libvirt.max-rate", v.max_rate),
            ("libvirt.max-burst", v.max_burst),
        ] {
            check_rate(i64::try_from(value).unwrap_or(i64::MAX))
                .map_err(|why| format!("{key} {why}"))?;
        }
        if self.log.max_age_days.is_some_and(|d| d > 36500) {
            return Err("log.max-age-days must be from 0 (never) to 36500".into());
        }
        if let Some(size) = v.max_size {
            check_policy_size(i64::try_from(size).unwrap_or(i64::MAX))
                .map_err(|why| format!("libvirt.max-size {why}"))?;
        }
        if let Some(backups) = v.max_backups {
            check_policy_backups(backups.into())
                .map_err(|why| format!("libvirt.max-backups {why}"))?;
        }
        if v.max_clients == Some(0) {
            return Err("libvirt.max-clients must be at least 1".into());
        }
        for root in &v.roots {
            let shown = root.display().to_string();
            LogName::from_path(&shown).map_err(|why| format!("libvirt.roots: {shown:?}: {why}"))?;
        }
        self.socket_mode()?;
        self.metrics_mode()?;
        let j = &self.journal;
        if j.max_lines_per_second > 0 && j.max_burst == 0 {
            return Err("journal.max-burst must be at least 1 with a rate".into());
        }
        Ok(())
    }

    /// The metrics socket's mode as a number.
    pub fn metrics_mode(&self) -> Result<u32, String> {
        u32::from_str_radix(&self.metrics.mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("metrics.mode {:?} is not an octal mode", self.metrics.mode))
    }

    /// Takes `max_size`, `max_backups` and `max_clients` from libvirt's
    /// virtlogd.conf (`shown` names it) where this configuration leaves them
    /// unset, after checking them against the bounds this configuration's
    /// own keys have; on an error nothing changes. Says once what it
    /// applied, what this configuration overrode and what it ignored.
    pub fn apply_virtlogd(
        &mut self,
        v: &VirtlogdConf,
        shown: &str,
    ) -> Result<(), VirtlogdConfError> {
        let bad = |line: usize, name: &str, what: String| VirtlogdConfError::Value {
            path: shown.to_owned(),
            line,
            name: name.to_owned(),
            what,
        };
        let own = self.libvirt.clone();
        let mut next = own.clone();
        let mut applied = Vec::new();
        let mut overridden = Vec::new();
        if let Some(s) = v.max_size {
            if own.max_size.is_some() {
                overridden.push("max_size (libvirt.max-size)");
            } else {
                check_policy_size(i64::try_from(s.value).unwrap_or(i64::MAX))
                    .map_err(|why| bad(s.line, "max_size", format!("{} {why}", s.value)))?;
                next.max_size = Some(s.value);
                applied.push(format!("max_size = {}", s.value));
            }
        }
        if let Some(s) = v.max_backups {
            if own.max_backups.is_some() {
                overridden.push("max_backups (libvirt.max-backups)");
            } else {
                check_policy_backups(s.value.into())
                    .map_err(|why| bad(s.line, "max_backups", format!("{} {why}", s.value)))?;
                next.max_backups = Some(s.value);
                applied.push(format!("max_backups = {}", s.value));
            }
        }
        if let Some(s) = v.max_clients {
            if own.max_clients.is_some() {
                overridden.push("max_clients (libvirt.max-clients)");
            } else if s.value == 0 {
                return Err(bad(s.line, "max_clients", "must be at least 1".into()));
            } else {
                next.max_clients = Some(s.value);
                applied.push(format!("max_clients = {}", s.value));
            }
        }
        self.libvirt = next;
        // The file and line in the message itself: the journal shows no
        // other field.
        if !applied.is_empty() {
            info!(
                "{shown}: applied to libvirt's logs and connections: {}",
                applied.join(", ")
            );
        }
        if !overridden.is_empty() {
            info!(
                "{shown}: guestlogd's own configuration wins for {}",
                overridden.join(", ")
            );
        }
        if let Some(line) = v.unbounded.filter(|_| own.max_size.is_none()) {
            warn!(
                "{shown}:{line}: max_size = 0 (no rollover) is not applied: guestlogd always \
                 caps libvirt's logs, here at {} bytes",
                self.libvirt.policy().max_size
            );
        }
        if let Some(s) = v.max_age_days {
            if self.log.max_age_days.is_some() {
                info!(
                    "{shown}: guestlogd's own configuration wins for max_age_days (log.max-age-days)"
                );
            } else if s.value > 36500 {
                return Err(bad(
                    s.line,
                    "max_age_days",
                    format!("{} must be from 0 to 36500", s.value),
                ));
            } else {
                self.log.max_age_days = Some(s.value);
                info!(
                    "{shown}: applied to every log's retention: max_age_days = {}",
                    s.value
                );
            }
        }
        if !v.ignored.is_empty() {
            info!(
                "{shown}: ignored (virtlogd's own settings, not guestlogd's): {}",
                v.ignored.join(", ")
            );
        }
        Ok(())
    }

    /// The socket mode as a number.
    pub fn socket_mode(&self) -> Result<u32, String> {
        u32::from_str_radix(&self.socket.mode, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("socket.mode {:?} is not an octal mode", self.socket.mode))
    }
}

/// zlink buffers up to 100 MiB per connection; we refuse far earlier.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Checks a cap against the bounds the interface documents.
pub fn check_policy_size(v: i64) -> Result<(), String> {
    let (lo, hi) = (policy::MIN_SIZE, policy::MAX_SIZE);
    u64::try_from(v)
        .is_ok_and(|v| (lo..=hi).contains(&v))
        .then_some(())
        .ok_or_else(|| format!("must be from {lo} to {hi}"))
}

/// Checks a rate or a burst against the bounds the interface documents.
pub fn check_rate(v: i64) -> Result<(), String> {
    u64::try_from(v)
        .is_ok_and(|v| v <= policy::MAX_RATE)
        .then_some(())
        .ok_or_else(|| format!("must be from 0 (no limit) to {}", policy::MAX_RATE))
}

/// Checks a backup count against the bounds the interface documents.
pub fn check_policy_backups(v: i64) -> Result<(), String> {
    (0..=i64::from(policy::MAX_BACKUPS))
        .contains(&v)
        .then_some(())
        .ok_or_else(|| format!("must be from 0 to {}", policy::MAX_BACKUPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_libvirt() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            c.log.policy(),
            Policy {
                max_size: 2 << 20,
                max_backups: 3,
                ..Policy::default()
            }
        );
        assert_eq!(c.socket_mode(), Ok(0o600));
    }

    #[test]
    fn parses_every_section() {
        let c: Config = toml::from_str(
            r#"
            [log]
            max-size = 65536
            max-backups = 1
            [limits]
            max-pipes = 8
            max-connections = 4
            max-message-size = 65536
            [socket]
            mode = "0660"
            group = "libvirt"
            [access]
            uids = [107]
            gids = [64055]
            [metrics]
            socket = "/run/m"
            [journal]
            max-lines-per-second = 10
            max-burst = 20
            "#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.limits.max_pipes, 8);
        assert_eq!(c.access.uids, [107]);
        assert_eq!(c.socket_mode(), Ok(0o660));
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        assert!(toml::from_str::<Config>("[limits]\nmax-pipe = 3").is_err());
        for bad in [
            "[log]\nmax-size = 10",
            "[log]\nmax-backups = 1000",
            "[limits]\nmax-pipes = 0",
            "[limits]\nmax-message-size = 1000000000",
            "[socket]\nmode = \"rw\"",
            "[metrics]\nmode = \"9\"",
            "[journal]\nmax-burst = 0",
        ] {
            let c: Config = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    fn virtlogd(text: &str) -> VirtlogdConf {
        VirtlogdConf::parse(text, "virtlogd.conf").unwrap()
    }

    #[test]
    fn virtlogd_conf_fills_what_the_config_leaves_unset() {
        let mut c = Config::default();
        assert_eq!(c.libvirt.policy(), Policy::default());
        assert_eq!(c.libvirt.max_clients(&c.limits), 256);
        let v = virtlogd("max_size = 65536\nmax_backups = 2\nmax_clients = 7\nlog_level = 1\n");
        c.apply_virtlogd(&v, "virtlogd.conf").unwrap();
        assert_eq!(
            c.libvirt.policy(),
            Policy {
                max_size: 65536,
                max_backups: 2,
                ..Policy::default()
            }
        );
        assert_eq!(c.libvirt.max_clients(&c.limits), 7);
        // The daemon's own log policy is not libvirt's.
        assert_eq!(c.log.policy(), Policy::default());
    }

    #[test]
    fn the_config_wins_over_virtlogd_conf() {
        let mut c = Config::parse(
            "[libvirt]\nmax-size = 1048576\nmax-clients = 3\n",
            "guestlogd.conf",
        )
        .unwrap();
        // Out of guestlogd's bounds, but overridden: never looked at.
        let v = virtlogd("max_size = 10\nmax_backups = 5\nmax_clients = 900\n");
        c.apply_virtlogd(&v, "virtlogd.conf").unwrap();
        assert_eq!(
            c.libvirt.policy(),
            Policy {
                max_size: 1048576,
                max_backups: 5,
                ..Policy::default()
            }
        );
        assert_eq!(c.libvirt.max_clients(&c.limits), 3);
    }

    #[test]
    fn virtlogd_values_out_of_bounds_change_nothing() {
        for (text, want) in [
            (
                "max_backups = 1\n\nmax_size = 100\n",
                "virtlogd.conf:3: max_size: 100 must be from 4096 to 1099511627776",
            ),
            (
                "max_size = 65536\nmax_backups = 65\n",
                "virtlogd.conf:2: max_backups: 65 must be from 0 to 64",
            ),
            (
                "max_size = 65536\nmax_clients = 0\n",
                "virtlogd.conf:2: max_clients: must be at least 1",
            ),
        ] {
            let mut c = Config::default();
            let e = c
                .apply_virtlogd(&virtlogd(text), "virtlogd.conf")
                .unwrap_err();
            assert_eq!(e.to_string(), want);
            assert_eq!(c, Config::default(), "{text}");
        }
    }

    #[test]
    fn no_rollover_is_not_applied_and_age_is_unless_set() {
        let mut c = Config::default();
        let v = virtlogd("max_size = 0\nmax_age_days = 30\n");
        c.apply_virtlogd(&v, "virtlogd.conf").unwrap();
        assert_eq!(c.log.max_age_days, Some(30));
        assert_eq!(c.libvirt, Config::default().libvirt);
        let mut own: Config = toml::from_str("[log]\nmax-age-days = 3\n").unwrap();
        own.apply_virtlogd(&v, "virtlogd.conf").unwrap();
        assert_eq!(own.log.max_age_days, Some(3));
    }
}
