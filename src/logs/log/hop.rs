//! What a log does when its domain migrates (`logs::migration`): it marks
//! where the domain arrived, just before the first byte the domain writes
//! on this host, and where it left, which also ends its followers.
//!
//! The arrival's line waits for that first byte, not for the log's
//! opening: with a shared instance directory the source may still be
//! writing this very file when the destination opens it, and its last
//! bytes come first. For the same reason the file is taken again at its
//! name, with its size, just before that line: whatever the source wrote
//! (or rotated) meanwhile stays, and the cap is counted from the real end.

use std::sync::Arc;

use tracing::info;

use super::{Log, Slot, Wait};
use crate::{
    error_chain, lock,
    logs::{
        migration::{self, HopState, LogDomain, Migrations},
        rotator::RotatingFile,
    },
};

impl Log {
    /// The log is now the output of `domain` (or of none), opened afresh:
    /// a departure it had is history.
    pub fn set_domain(&self, domain: Option<LogDomain>) {
        let mut hop = lock(&self.hop);
        hop.domain = domain;
        hop.departed = None;
    }

    pub fn domain(&self) -> Option<LogDomain> {
        lock(&self.hop).domain.clone()
    }

    /// The log's domain, called `name`, arrives by migration: its first
    /// byte here is preceded by a line that says so.
    pub fn expect_arrival(&self, name: &str) {
        let mut hop = lock(&self.hop);
        hop.arrival = Some(name.to_owned());
        hop.departed = None;
    }

    /// The line that ended the log's followers, if its domain left.
    pub fn departed(&self) -> Option<String> {
        lock(&self.hop).departed.clone()
    }

    pub fn hop_state(&self) -> HopState {
        lock(&self.hop).clone()
    }

    /// Writes the arrival's line, if one waits, before what comes next (in
    /// `write_in`). It stays pending while the file cannot be written.
    /// Whether the `migrated in` line still waits for the domain's first
    /// byte here.
    pub(super) fn arrival_pending(&self) -> bool {
        lock(&self.hop).arrival.is_some()
    }

    pub(super) fn write_arrival(&self, slot: &mut Slot) {
        let Some(domain) = lock(&self.hop).arrival.clone() else {
            return;
        };
        if let Some(file) = slot.as_mut() {
            let taken = self
                .places
                .place(&self.name)
                .and_then(|(dir, _)| file.reopen(dir));
            if let Err(e) = taken {
                crate::limited!(warn, log = %self.name, error = %error_chain(&e), "cannot take the log again at its name before its domain's arrival");
                return;
            }
        }
        let Ok(file) = self.file(slot) else { return };
        let line = self.write_line(file, &migration::notice(&domain, true));
        if let Some(line) = line {
            self.fan_out(&line);
            lock(&self.hop).arrival = None;
            info!(
                message_id = crate::logging::events::MIGRATED_IN,
                log = %self.name,
                domain,
                "the log's domain arrived by migration"
            );
        }
    }

    /// The log's domain, `domain`, has left by migration: the log gets a
    /// line that says so, and its followers get that line and end.
    pub async fn depart(self: &Arc<Self>, domain: String) {
        let text = migration::notice(&domain, false);
        let written = self
            .run(Wait::Forever, move |log, slot| {
                let file = log.file(slot)?;
                log.write_gaps(file);
                if let Some(line) = log.write_line(file, &text) {
                    log.fan_out(&line);
                }
                let mut hop = lock(&log.hop);
                hop.departed = Some(text);
                hop.arrival = None;
                drop(hop);
                // Each follower gets what was queued for it, this line
                // last, and then its end.
                for q in lock(&log.followers).drain(..) {
                    if let Some(q) = q.upgrade() {
                        q.finish();
                    }
                }
                Ok(())
            })
            .await;
        match written {
            Ok(()) => info!(
                message_id = crate::logging::events::MIGRATED_OUT,
                log = %self.name,
                domain,
                "the log's domain left by migration"
            ),
            Err(e) => {
                crate::limited!(warn, log = %self.name, error = %error_chain(&e), "cannot mark the log's domain's departure")
            }
        }
    }

    /// At the end of a pipe into this log: if the log's domain is leaving
    /// by migration, that is its departure.
    pub async fn pipe_ended(self: &Arc<Self>, migrations: &Migrations) {
        let Some(domain) = self.domain() else { return };
        if let Some(name) = migrations.leaving(&domain.uuid) {
            self.depart(name).await;
        }
    }

    /// Writes `text` as a line of its own (after a newline if the file
    /// does not end at one), uncounted as data; the bytes written.
    fn write_line(&self, file: &mut RotatingFile, text: &str) -> Option<Vec<u8>> {
        let mut line = Vec::with_capacity(text.len() + 2);
        if file.size() > 0 && !file.ends_in_newline() {
            line.push(b'\n');
        }
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        match file.write_notice(&line) {
            Ok(()) => {
                self.usage.grew(line.len() as u64);
                Some(line)
            }
            Err(e) => {
                crate::limited!(warn, log = %self.name, error = %error_chain(&e), "cannot write a migration's line");
                None
            }
        }
    }
}
