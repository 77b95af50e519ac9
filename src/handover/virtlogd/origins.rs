//! `Origins`: which logs libvirt opened, with the driver and domain its
//! OpenLogFile named (or virtlogd's state carried): what a hand-back to
//! virtlogd writes for each of their pipes, since virtlogd's state needs
//! them and guestlogd's own saved state keeps them across its restarts.
//!
//! A log has one libvirt origin at most: libvirt's OpenLogFile is
//! exclusive, so a log libvirt writes has one pipe at a time, and the last
//! OpenLogFile on a path names its domain.

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Deserialize, Serialize};

use crate::{lock, logs::name::LogName};

/// Who opened a libvirt log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// As libvirt sent it ("QEMU").
    pub driver: String,
    /// The domain's name and UUID (lowercase, with dashes).
    pub domain: String,
    pub uuid: String,
}

/// Every libvirt log's origin, by log name.
#[derive(Debug, Default)]
pub struct Origins(Mutex<BTreeMap<LogName, Origin>>);

impl Origins {
    pub fn set(&self, log: LogName, origin: Origin) {
        lock(&self.0).insert(log, origin);
    }

    pub fn get(&self, log: &LogName) -> Option<Origin> {
        lock(&self.0).get(log).cloned()
    }

    /// What a saved state carried.
    pub fn restore(&self, saved: BTreeMap<String, Origin>) {
        let mut map = lock(&self.0);
        for (name, origin) in saved {
            if let Ok(name) = LogName::parse(&name) {
                map.insert(name, origin);
            }
        }
    }

    /// What a state saves: the origins of the logs in `known`, the others
    /// forgotten for good.
    pub fn save(&self, known: impl Fn(&LogName) -> bool) -> BTreeMap<String, Origin> {
        let mut map = lock(&self.0);
        map.retain(|name, _| known(name));
        map.iter()
            .map(|(n, o)| (n.as_str().to_owned(), o.clone()))
            .collect()
    }

    pub fn all(&self) -> BTreeMap<LogName, Origin> {
        lock(&self.0).clone()
    }
}

/// A UUID of 16 bytes as virtlogd writes it.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let hex =
        |r: std::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_known_logs() {
        let o = Origins::default();
        let origin = Origin {
            driver: "QEMU".into(),
            domain: "vm1".into(),
            uuid: uuid_string(&[0; 16]),
        };
        o.set(
            LogName::from_path("/var/log/a.log").unwrap(),
            origin.clone(),
        );
        o.set(
            LogName::from_path("/var/log/b.log").unwrap(),
            origin.clone(),
        );
        let saved = o.save(|n| n.as_str().ends_with("a.log"));
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["/var/log/a.log"]);
        let again = Origins::default();
        again.restore(saved);
        assert_eq!(
            again.get(&LogName::from_path("/var/log/a.log").unwrap()),
            Some(origin)
        );
        assert_eq!(
            uuid_string(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
    }
}
