//! The daemon's own events that an operator matches or alerts on, each
//! with a fixed 128-bit `MESSAGE_ID` (32 lowercase hex digits, as
//! `systemd-id128 new` prints them) and an entry in
//! `systemd/guestlogd.catalog`, so `journalctl -x` explains it.
//!
//! Invariants: an id never changes once released (collectors and alerts
//! are built on it), and every id here has exactly one catalog entry (a
//! test checks both ways). Log an event with its id as the `message_id`
//! field: `info!(message_id = events::TAKEOVER, ...)`; the journal layer
//! writes that field as `MESSAGE_ID`.

/// A guestlogd took over from the previous one after a planned restart,
/// stop and start, or re-exec: nothing was lost.
pub const TAKEOVER: &str = "a99dbf7ef3a64786a4b064746eaaee00";
/// A guestlogd took over after its predecessor crashed or was killed:
/// output queued for console clients may be missing (the logs have it).
pub const TAKEOVER_CRASH: &str = "f909971a37b64f07aeef12ecd005c268";
/// A console client took the writer's place (`attach --force`).
pub const WRITER_TAKEOVER: &str = "2c7db8182b994b8b9a1383569d116a02";
/// A log's disk refused bytes; they are counted in `bytesDropped`.
pub const DISK_ERROR: &str = "b33c078530d644e5b8840dd8656a03c0";
/// The journal budget of a log suppressed lines; one entry per episode,
/// sent into the journal among the log's own lines.
pub const JOURNAL_SUPPRESSED: &str = "6fa14f2a93454aeeaded8acfc9423ac3";
/// A gap was marked in a log where bytes could not be kept: the disk
/// refused them, or a pipe's rate limit dropped them.
pub const GAP: &str = "bcd4700d462c4bf3af072d13db5550ae";
/// Log files were removed early to keep the disk budget.
pub const EVICTION: &str = "f2d3b2f60bcf44dba81eabc047915d25";
/// A log's rate limit began holding back its writer: a console's guest
/// is read slower, a pipe's excess is dropped.
pub const THROTTLE_START: &str = "86cfb2569b5b42d4a546089298d52574";
/// A log's rate limit let its writer go at its own pace again.
pub const THROTTLE_END: &str = "87c8a2a33d194778807a33d7ba9cd2f9";
/// A log's domain arrived on this host by live migration: the log got
/// the line "domain NAME migrated in" before its first byte here.
pub const MIGRATED_IN: &str = "d5d4150057484b8c9fdec1264f9b673f";
/// A log's domain left this host by live migration: the log got the line
/// "domain NAME migrated out" where its output here ends.
pub const MIGRATED_OUT: &str = "b1d86257792949389416d6a2c758910d";
/// guestlogd took over libvirt's virtlogd's logs in virtlogd's process
/// (its SIGUSR1 re-exec): every pipe, libvirt's socket and clients.
pub const VIRTLOGD_TAKEOVER: &str = "1333fd83617e4a8f81b124cbe3aa5b24";
/// guestlogd could not take over virtlogd's state and gave it back to the
/// real virtlogd, which adopts it: nothing was lost, nothing switched.
pub const VIRTLOGD_FALLBACK: &str = "587e51ac45234e728c34fc5214f5cbeb";
/// guestlogd handed libvirt's logs back to libvirt's virtlogd
/// (`guestlogctl restore-virtlogd`).
pub const HANDBACK: &str = "25ca110fb2a64f5bb0c459848d58c38f";

/// Every id, with its constant's name, for the catalog check.
pub const ALL: &[(&str, &str)] = &[
    ("TAKEOVER", TAKEOVER),
    ("TAKEOVER_CRASH", TAKEOVER_CRASH),
    ("WRITER_TAKEOVER", WRITER_TAKEOVER),
    ("DISK_ERROR", DISK_ERROR),
    ("JOURNAL_SUPPRESSED", JOURNAL_SUPPRESSED),
    ("GAP", GAP),
    ("EVICTION", EVICTION),
    ("THROTTLE_START", THROTTLE_START),
    ("THROTTLE_END", THROTTLE_END),
    ("MIGRATED_IN", MIGRATED_IN),
    ("MIGRATED_OUT", MIGRATED_OUT),
    ("VIRTLOGD_TAKEOVER", VIRTLOGD_TAKEOVER),
    ("VIRTLOGD_FALLBACK", VIRTLOGD_FALLBACK),
    ("HANDBACK", HANDBACK),
];

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = include_str!("../../systemd/guestlogd.catalog");

    #[test]
    fn every_id_is_128_bits_and_has_one_catalog_entry() {
        let entries: Vec<&str> = CATALOG
            .lines()
            .filter_map(|l| l.strip_prefix("-- "))
            .map(str::trim)
            .collect();
        for (name, id) in ALL {
            assert_eq!(id.len(), 32, "{name}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{name}"
            );
            let n = entries.iter().filter(|e| *e == id).count();
            assert_eq!(n, 1, "{name} ({id}) has {n} catalog entries");
        }
        assert_eq!(
            entries.len(),
            ALL.len(),
            "the catalog has entries no id has"
        );
        let unique: std::collections::BTreeSet<_> = ALL.iter().map(|(_, id)| id).collect();
        assert_eq!(unique.len(), ALL.len());
    }
}
