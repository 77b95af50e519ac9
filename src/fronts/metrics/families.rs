//! The metric families guestlogd serves under `io.systemd.Metrics`, and
//! the metrics of each, read from the daemon's live figures as a List
//! reaches them.
//!
//! Invariants: the table's order is Describe's and List's; every family
//! List returns is in the table; a List holds no log or console strongly
//! (a slow reader must not keep the registry from forgetting logs), so it
//! costs one weak pointer per log and console, whatever it lists.
//! Counters of the fronts add what the saved state carried over
//! (`FrontTally::base`), so they stay monotonic across restarts, as the
//! logs' and consoles' own counters do through their restored figures.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Weak, atomic::Ordering::Relaxed},
};

use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::{
    consoles::{console::Console, table::Consoles},
    fronts::server::Counters,
    logs::{
        log::{Log, LogSnapshot},
        registry::Registry,
    },
};

/// A family's kind, as `MetricFamilyType` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    scope: Scope,
}

/// What a family's metrics are about, and how each value is read.
#[derive(Debug)]
enum Scope {
    /// One per log; `None` leaves a log out (journal figures of a log that
    /// does not export).
    Log(fn(&LogSnapshot) -> Option<u64>),
    Console(fn(&Console) -> u64),
    /// One per front and reason, from its `FrontTally`.
    Front(FrontFigure),
    Daemon(fn(&Sources) -> u64),
}

#[derive(Debug, Clone, Copy)]
enum FrontFigure {
    Open,
    Accepted,
    Refused,
    Closed,
}

const fn family(name: &'static str, kind: Kind, description: &'static str, scope: Scope) -> Family {
    Family {
        name,
        kind,
        description,
        scope,
    }
}

use Kind::{Counter, Gauge};

/// Every family, in the order Describe and List give them.
#[rustfmt::skip]
pub static FAMILIES: &[Family] = &[
    family("io.guestlogd.logBytesWritten", Counter,
        "Bytes written into the log's files, from pipes, consoles and AppendLog.",
        Scope::Log(|s| Some(s.bytes_written))),
    family("io.guestlogd.logBytesDropped", Counter,
        "Bytes read for the log that its disk refused, so the log lacks them.",
        Scope::Log(|s| Some(s.bytes_dropped))),
    family("io.guestlogd.logBytesEvicted", Counter,
        "Bytes of the log's backups deleted before their time to keep a disk budget; 0 while no budget is set.",
        Scope::Log(|s| Some(s.bytes_evicted))),
    family("io.guestlogd.logRotations", Counter,
        "Times the log was rotated.",
        Scope::Log(|s| Some(s.rotations))),
    family("io.guestlogd.logSize", Gauge,
        "Bytes in the log's current file.",
        Scope::Log(|s| Some(s.size))),
    family("io.guestlogd.logPipes", Gauge,
        "Pipes open into the log.",
        Scope::Log(|s| Some(s.pipes as u64))),
    family("io.guestlogd.logJournalLinesSent", Counter,
        "Lines (and parts of long lines) of the log sent to the journal; only for logs that export to it.",
        Scope::Log(|s| s.journal.map(|j| j.lines_sent))),
    family("io.guestlogd.logJournalLinesSuppressed", Counter,
        "Lines of the log kept out of the journal by its journal budget (the log's file has them); only for logs that export to it.",
        Scope::Log(|s| s.journal.map(|j| j.lines_suppressed))),
    family("io.guestlogd.consoleBytesFromGuest", Counter,
        "Bytes read from the console's guest.",
        Scope::Console(|c| c.stats.bytes_from_guest.load(Relaxed))),
    family("io.guestlogd.consoleBytesToGuest", Counter,
        "Bytes of client input written to the console's guest.",
        Scope::Console(|c| c.stats.bytes_to_guest.load(Relaxed))),
    family("io.guestlogd.consoleBytesDroppedForClients", Counter,
        "Bytes of guest output that slow clients, viewers and followers of the console did not get, summed over them.",
        Scope::Console(Console::bytes_dropped_for_clients)),
    family("io.guestlogd.consoleClients", Gauge,
        "Clients attached to the console.",
        Scope::Console(|c| c.stats.clients.load(Relaxed) as u64)),
    family("io.guestlogd.consoleViewers", Gauge,
        "Read-only viewers attached to the console.",
        Scope::Console(|c| c.stats.viewers.load(Relaxed) as u64)),
    family("io.guestlogd.consoleGuestConnected", Gauge,
        "1 while the console's guest (QEMU) is connected, else 0.",
        Scope::Console(|c| c.stats.guest_connected.load(Relaxed).into())),
    family("io.guestlogd.frontConnectionsOpen", Gauge,
        "Connections open on the front.",
        Scope::Front(FrontFigure::Open)),
    family("io.guestlogd.frontConnectionsAccepted", Counter,
        "Connections the front accepted.",
        Scope::Front(FrontFigure::Accepted)),
    family("io.guestlogd.frontConnectionsRefused", Counter,
        "Connections the front refused, by reason: connections (max-connections were open), connectionsPerUid, peer (a peer the front never serves).",
        Scope::Front(FrontFigure::Refused)),
    family("io.guestlogd.frontConnectionsClosed", Counter,
        "Connections the front closed for a limit, by reason: idle, messageTimeout, messageSize, writeTimeout, fds, oneway, badMessage.",
        Scope::Front(FrontFigure::Closed)),
    family("io.guestlogd.takeovers", Counter,
        "Times a guestlogd took over from a previous one (restarts, re-execs and crashes survived).",
        Scope::Daemon(|s| s.adoptions)),
    family("io.guestlogd.storedDescriptors", Gauge,
        "Descriptors kept for the next guestlogd: pipes, console sockets and connections, the saved state.",
        Scope::Daemon(|s| s.registry.store().len() as u64)),
    family("io.guestlogd.openLogFiles", Gauge,
        "Logs whose file is open now.",
        Scope::Daemon(|s| s.registry.open_files() as u64)),
    family("io.guestlogd.logsRemembered", Gauge,
        "Logs the daemon remembers (at most limits.max-logs).",
        Scope::Daemon(|s| s.registry.len() as u64)),
];

/// One front's connection counters, and what a previous guestlogd counted.
#[derive(Debug)]
pub struct FrontTally {
    /// "varlink", "libvirt" or "metrics".
    pub name: &'static str,
    pub counters: Arc<Counters>,
    pub connections: TaskTracker,
    /// Totals carried over by the saved state, by `key`.
    pub base: BTreeMap<String, u64>,
}

/// A reason, with the counter that counts it.
type Reason = (&'static str, fn(&Counters) -> &std::sync::atomic::AtomicU64);

/// Why connections were refused.
const REFUSED: &[Reason] = &[
    ("connections", |c| &c.refused_connections),
    ("connectionsPerUid", |c| &c.refused_per_uid),
    ("peer", |c| &c.refused_peers),
];

/// Why connections were closed.
const CLOSED: &[Reason] = &[
    ("idle", |c| &c.closed_idle),
    ("messageTimeout", |c| &c.closed_message_timeout),
    ("messageSize", |c| &c.closed_message_size),
    ("writeTimeout", |c| &c.closed_write_timeout),
    ("fds", |c| &c.closed_fds),
    ("oneway", |c| &c.closed_oneway),
    ("badMessage", |c| &c.closed_bad_message),
];

impl FrontTally {
    /// The counters of this process, by key (`FRONT/figure/reason`), to
    /// add to `base`.
    fn counted(&self) -> Vec<(String, Option<&'static str>, FrontFigure, u64)> {
        let c = &*self.counters;
        let key = |what: &str| format!("{}/{what}", self.name);
        let mut out = vec![(
            key("accepted"),
            None,
            FrontFigure::Accepted,
            c.accepted.load(Relaxed),
        )];
        for (reason, counter) in REFUSED {
            let value = counter(c).load(Relaxed);
            out.push((
                key(&format!("refused/{reason}")),
                Some(*reason),
                FrontFigure::Refused,
                value,
            ));
        }
        for (reason, counter) in CLOSED {
            let value = counter(c).load(Relaxed);
            out.push((
                key(&format!("closed/{reason}")),
                Some(*reason),
                FrontFigure::Closed,
                value,
            ));
        }
        out
    }

    /// Every counter's total since the FD store was last empty, by key:
    /// what the saved state carries.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.counted()
            .into_iter()
            .map(|(key, _, _, now)| {
                let base = self.base.get(&key).copied().unwrap_or(0);
                (key, base.saturating_add(now))
            })
            .collect()
    }

    fn metrics(&self, family: &'static str, figure: FrontFigure, out: &mut VecDeque<Metric>) {
        let object = Some(self.name.to_owned());
        if let FrontFigure::Open = figure {
            let value = self.connections.len() as u64;
            out.push_back(Metric {
                family,
                object,
                fields: None,
                value,
            });
            return;
        }
        for (key, reason, f, now) in self.counted() {
            if std::mem::discriminant(&f) != std::mem::discriminant(&figure) {
                continue;
            }
            let value = self
                .base
                .get(&key)
                .copied()
                .unwrap_or(0)
                .saturating_add(now);
            let fields = reason.map(|r| Fields { reason: r });
            out.push_back(Metric {
                family,
                object: object.clone(),
                fields,
                value,
            });
        }
    }
}

/// Where the figures come from.
#[derive(Debug)]
pub struct Sources {
    pub registry: Arc<Registry>,
    pub consoles: Arc<Consoles>,
    /// Takeovers before this process, as GetStatus's adoptions.
    pub adoptions: u64,
    pub fronts: Vec<FrontTally>,
}

impl Sources {
    /// Every front counter's total, for the saved state.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.fronts.iter().flat_map(FrontTally::totals).collect()
    }
}

/// One metric, as a List reply's parameters.
#[derive(Debug, Serialize)]
pub struct Metric {
    #[serde(rename = "name")]
    pub family: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Fields>,
    pub value: u64,
}

#[derive(Debug, Serialize)]
pub struct Fields {
    pub reason: &'static str,
}

/// Every metric, produced one at a time: each value is read when its
/// reply is about to go out.
pub struct Listing {
    sources: Arc<Sources>,
    logs: Vec<Weak<Log>>,
    consoles: Vec<Weak<Console>>,
    family: usize,
    next: usize,
    ready: VecDeque<Metric>,
}

impl Listing {
    pub fn new(sources: Arc<Sources>) -> Self {
        let logs = sources.registry.logs().iter().map(Arc::downgrade).collect();
        let consoles = sources.consoles.all().iter().map(Arc::downgrade).collect();
        Self {
            sources,
            logs,
            consoles,
            family: 0,
            next: 0,
            ready: VecDeque::new(),
        }
    }

    /// The next object of this family's kind, if any: its index moves on.
    fn advance<T>(items: &[Weak<T>], next: &mut usize) -> Option<Option<Arc<T>>> {
        let item = items.get(*next)?;
        *next += 1;
        Some(item.upgrade())
    }
}

impl Iterator for Listing {
    type Item = Metric;

    fn next(&mut self) -> Option<Metric> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            let family = FAMILIES.get(self.family)?;
            let name = family.name;
            let done = match &family.scope {
                Scope::Log(value) => match Self::advance(&self.logs, &mut self.next) {
                    None => true,
                    // Forgotten since the listing began.
                    Some(None) => false,
                    Some(Some(log)) => {
                        let s = log.snapshot();
                        if let Some(value) = value(&s) {
                            let object = Some(s.name.to_string());
                            self.ready.push_back(Metric {
                                family: name,
                                object,
                                fields: None,
                                value,
                            });
                        }
                        false
                    }
                },
                Scope::Console(value) => match Self::advance(&self.consoles, &mut self.next) {
                    None => true,
                    Some(None) => false,
                    Some(Some(c)) => {
                        let object = Some(c.name.to_string());
                        let value = value(&c);
                        self.ready.push_back(Metric {
                            family: name,
                            object,
                            fields: None,
                            value,
                        });
                        false
                    }
                },
                Scope::Front(figure) => {
                    for front in &self.sources.fronts {
                        front.metrics(name, *figure, &mut self.ready);
                    }
                    true
                }
                Scope::Daemon(value) => {
                    let value = value(&self.sources);
                    self.ready.push_back(Metric {
                        family: name,
                        object: None,
                        fields: None,
                        value,
                    });
                    true
                }
            };
            if done {
                self.family += 1;
                self.next = 0;
            }
        }
    }
}
