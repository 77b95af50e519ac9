//! A console's boot log: the first `bootBytes` of output after each guest
//! connection, kept in the log `NAME.boot` (`LOGDIR/NAME.boot.log`) beside
//! the capped `NAME.log`.
//!
//! It is an ordinary log of the registry, so it gets the same file safety
//! (opened inside the log directory without following links), ListLogs,
//! ReadLog and Follow. Its policy keeps it from ever rotating: its cap is
//! at least `bootBytes` and it has no backups, and the relay stops writing
//! once `bootBytes` are in. It is emptied when a guest connects, not when
//! anything rotates, so the kernel's messages of the last boot stay until
//! the next one, even after the console is removed.
//!
//! These few functions are the relay's only contact with it: the relay
//! calls `guest_connected` and `output` beside its own log write.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    error_chain,
    logs::{
        log::{Log, Wait},
        name::{BOOT_SUFFIX, LogName, NameError},
        policy::PolicyChange,
    },
};

/// The largest `bootBytes`.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest cap a log may have.
const MIN_CAP: u64 = 4096;

/// The boot log's name for a console.
pub fn name(console: &LogName) -> Result<LogName, NameError> {
    LogName::try_from(format!("{console}{BOOT_SUFFIX}").as_str())
}

/// A policy that never rotates what `bytes` of output can write.
pub fn policy(bytes: u64) -> PolicyChange {
    PolicyChange {
        max_size: Some(bytes.max(MIN_CAP)),
        max_backups: Some(0),
        ..PolicyChange::default()
    }
}

/// The relay's end of a boot log.
#[derive(Debug)]
pub struct BootLog {
    log: Arc<Log>,
    limit: u64,
    /// Bytes of this guest connection's output written so far.
    written: u64,
}

impl BootLog {
    /// Picks up where the file is: a console taken over from a previous
    /// guestlogd keeps filling the boot log of the same guest connection.
    /// The size is the file's own, measured in the log's job: after a
    /// crash the saved state's is stale, and trusting it would write past
    /// the limit and rotate the boot away.
    pub async fn resume(log: Arc<Log>, limit: u64) -> Self {
        let written = match log.with_file(Wait::Forever, |f| Ok(f.size())).await {
            Ok(size) => size,
            // Writes fail the same way; the log counts and reports them.
            Err(_) => log.snapshot().size,
        };
        Self {
            log,
            limit,
            written,
        }
    }

    /// A new guest connection starts a new boot log. A failed truncation
    /// is logged; the old boot then stays, and nothing of the new one is
    /// written over it.
    pub async fn guest_connected(&mut self) {
        match self.log.with_file(Wait::Forever, |f| f.truncate()).await {
            Ok(()) => self.written = 0,
            Err(e) => {
                crate::limited!(warn, error = %error_chain(&e), "cannot empty the boot log");
                self.written = self.limit;
            }
        }
    }

    /// This guest connection is not a boot (its domain arrived by live
    /// migration): the boot log keeps the last boot, and nothing of this
    /// connection's output is added to it.
    pub fn close(&mut self) {
        self.written = self.limit;
    }

    /// Keeps what of `data` still fits in this boot.
    pub async fn output(&mut self, data: &Bytes) {
        let room = self.limit.saturating_sub(self.written);
        if room == 0 {
            return;
        }
        let n = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.written += n as u64;
        // A refused write is counted and logged by the log itself.
        let _ = self.log.write(Wait::Forever, data.slice(..n)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fdstore::FdStore,
        logs::{policy::Policy, registry::Registry},
    };

    fn registry(dir: &std::path::Path) -> Registry {
        Registry::new(
            dir.to_owned(),
            Vec::new(),
            Policy::default(),
            16,
            64,
            Arc::new(FdStore::new(false)),
            Arc::new(crate::logs::usage::Usage::off()),
        )
    }

    #[tokio::test]
    async fn keeps_the_first_bytes_of_each_connection_and_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let console = LogName::try_from("vm-serial0").unwrap();
        let name = name(&console).unwrap();
        assert_eq!(name.as_str(), "vm-serial0.boot");
        let (log, _) = r.entry(&name, policy(10)).unwrap();
        let path = dir.path().join("vm-serial0.boot.log");
        let mut boot = BootLog::resume(log.clone(), 10).await;
        boot.guest_connected().await;
        for data in [&b"0123"[..], b"456789abc", b"more"] {
            boot.output(&Bytes::copy_from_slice(data)).await;
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        // The next connection replaces it.
        boot.guest_connected().await;
        boot.output(&Bytes::from_static(b"second\n")).await;
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n");
        // A successor picks up where the file is.
        let mut again = BootLog::resume(log.clone(), 10).await;
        again.output(&Bytes::from_static(b"123456")).await;
        assert_eq!(std::fs::read(&path).unwrap(), b"second\n123");
        let s = log.snapshot();
        assert_eq!((s.rotations, s.policy.max_backups), (0, 0));
        assert!(!dir.path().join("vm-serial0.boot.log.0").exists());
    }

    #[test]
    fn a_long_console_name_has_no_boot_log() {
        let console = LogName::try_from("x".repeat(124).as_str()).unwrap();
        assert!(name(&console).is_err());
        let console = LogName::try_from("x".repeat(123).as_str()).unwrap();
        assert!(name(&console).is_ok());
    }
}
