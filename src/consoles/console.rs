//! What one console is: its settings, its figures, the handle that stops
//! it, and what passes between its relay and the rest of the daemon
//! (clients handed to it, connections adopted from a previous guestlogd,
//! client output left for the next one). Plain types: the table
//! (`table`) makes consoles and the relay (`relay`) runs them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use serde::{Deserialize, Serialize};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::writers::{Who, Writers};
use crate::{
    fdstore::Kept,
    lock,
    logs::{log::Log, name::LogName, queue::SlowPolicy, registry::Registry},
};

/// Who owns a console's sockets, and their mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
}

impl Default for Owner {
    fn default() -> Self {
        Self {
            uid: None,
            gid: None,
            mode: 0o600,
        }
    }
}

/// The libvirt domain a console belongs to: its UUID decides who owns the
/// console; its name is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub uuid: String,
    pub name: String,
}

/// Why a domain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("the UUID is not in libvirt's form (8-4-4-4-12 lowercase hex digits)")]
    Uuid,
    #[error("the name must be 1 to 255 bytes with no control character")]
    Name,
}

impl Domain {
    /// A domain as libvirt names it: its UUID in canonical form (which
    /// makes one domain one string) and a printable name.
    pub fn new(uuid: &str, name: &str) -> Result<Self, DomainError> {
        let groups: Vec<&str> = uuid.split('-').collect();
        let canonical = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if !canonical {
            return Err(DomainError::Uuid);
        }
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(DomainError::Name);
        }
        Ok(Self {
            uuid: uuid.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Everything CreateConsole decided, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: LogName,
    /// The log the guest's output goes to, if any.
    pub log: Option<Arc<Log>>,
    pub replay: usize,
    pub slow: SlowPolicy,
    pub owner: Owner,
    pub viewers: bool,
    /// A client's queue, in bytes.
    pub queue: usize,
    /// The most clients, and separately the most viewers.
    pub max_clients: usize,
    /// For the descriptor store and the saved state.
    pub registry: Arc<Registry>,
    pub writers: Writers,
    /// The boot log (`boot`), if any, and how much of each boot it keeps.
    pub boot: Option<Arc<Log>>,
    pub boot_bytes: u64,
    /// The domain the console was made for, if any (`Console::domain`
    /// says whose it is now).
    pub domain: Option<Domain>,
}

/// A console's figures, shared by its relay task and ListLogs.
#[derive(Debug, Default)]
pub struct Stats {
    pub guest_connected: AtomicBool,
    pub clients: AtomicUsize,
    pub viewers: AtomicUsize,
    pub bytes_from_guest: AtomicU64,
    pub bytes_to_guest: AtomicU64,
    pub bytes_dropped_for_clients: AtomicU64,
    /// Microseconds the guest was not read because of the log's rate.
    pub throttled_us: AtomicU64,
    /// With one writer: the writer's descriptor name and credentials.
    pub writer: Mutex<Option<(String, Who)>>,
    /// Every client's credentials, by descriptor name, for the saved state:
    /// a client made by AttachConsole has the daemon as its socket peer.
    /// A list, not a map: a console has a client or two, and a map's
    /// first node alone costs more than that list.
    pub peers: Mutex<Vec<(String, Who)>>,
    /// The guest connection came with its domain's live migration, so it
    /// adds nothing to the boot log (`boot`); for the saved state.
    pub boot_closed: AtomicBool,
}

/// A running console.
#[derive(Debug)]
pub struct Console {
    pub name: LogName,
    pub guest_socket: PathBuf,
    pub client_socket: PathBuf,
    pub view_socket: Option<PathBuf>,
    pub log_path: Option<PathBuf>,
    pub boot_log_path: Option<PathBuf>,
    /// The log, for the figures of its followers.
    pub log: Option<Arc<Log>>,
    pub stats: Arc<Stats>,
    pub settings: Settings,
    /// The domain the console belongs to: the one it was made for, or the
    /// first whose `prepare` found it made by hand (`claim`).
    pub(super) owner: Mutex<Option<Domain>>,
    pub(super) stop: CancellationToken,
    /// Set by RemoveConsole: the relay closes everything instead of handing
    /// it over.
    pub(super) removing: AtomicBool,
    /// Set by RemoveConsole too: the domain left by live migration, and
    /// the log and the clients are told before the end.
    pub(super) migrated: AtomicBool,
    /// The relay task; taken by whoever waits for it to end.
    pub(super) task: Mutex<Option<JoinHandle<Handover>>>,
    /// AttachConsole's way to the relay: requests it has not taken yet
    /// (none once it has ended), allocated only while some wait.
    pub(super) attaches: Mutex<Option<std::collections::VecDeque<AttachRequest>>>,
    /// Told when a request is queued.
    pub(super) attach_ready: tokio::sync::Notify,
}

/// A client handed to the relay by AttachConsole.
#[derive(Debug)]
pub struct AttachRequest {
    pub stream: UnixStream,
    pub who: Who,
    pub viewer: bool,
    pub force: bool,
    /// Whether the client may write, or the limit that refused it: its
    /// name (`clients`, `viewers`, `clientsTotal`) and its value.
    pub reply: oneshot::Sender<Result<bool, (&'static str, usize)>>,
}

/// What a previous guestlogd passed on for one console.
#[derive(Debug, Default)]
pub struct Adopted {
    pub guest: Option<Kept<UnixStream>>,
    pub clients: Vec<AdoptedClient>,
    /// With one writer: the writer's descriptor name.
    pub writer: Option<String>,
    /// The guest connection is not a boot (`Stats::boot_closed`).
    pub boot_closed: bool,
}

#[derive(Debug)]
pub struct AdoptedClient {
    pub stream: Kept<UnixStream>,
    pub viewer: bool,
    pub pending: Vec<u8>,
    /// Its credentials as saved; else its socket peer's.
    pub who: Option<Who>,
}

/// Why a console could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("a console named {name} exists")]
    Exists {
        name: LogName,
        /// The domain the existing console belongs to.
        owner: Option<Domain>,
    },
    #[error("{0} consoles exist already")]
    Limit(usize),
    #[error("cannot set up {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why RemoveConsole removed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("no console {0}")]
    NoSuchConsole(LogName),
    #[error("console {name} belongs to another domain")]
    Owned {
        name: LogName,
        owner: Option<Domain>,
    },
}

/// Why AttachConsole could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no console {0}")]
    NoSuchConsole(LogName),
    #[error("{max} {what} are attached already")]
    Limit { what: &'static str, max: usize },
    #[error("cannot make a connection to attach")]
    Socket(#[source] std::io::Error),
}

/// A console's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    pub guest: Kept<UnixListener>,
    pub client: Kept<UnixListener>,
    pub view: Option<Kept<UnixListener>>,
}

/// What a console's relay leaves for the next guestlogd: client output
/// it had queued, by client descriptor name.
pub type Handover = BTreeMap<String, Pending>;

/// A client's unsent output.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Base64.
    pub data: String,
    /// Bytes it had already lost, still to be announced.
    pub dropped: u64,
}

impl Console {
    /// Hands a client to the relay; gives it back if the relay has ended.
    pub(super) fn request_attach(&self, r: AttachRequest) -> Result<(), AttachRequest> {
        match lock(&self.attaches).as_mut() {
            Some(q) => {
                q.push_back(r);
                self.attach_ready.notify_one();
                Ok(())
            }
            None => Err(r),
        }
    }

    /// The next client AttachConsole handed over, if any.
    pub(super) fn next_attach(&self) -> Option<AttachRequest> {
        let mut slot = lock(&self.attaches);
        let q = slot.as_mut()?;
        let r = q.pop_front();
        if q.is_empty() {
            // Freed, not kept for the next call.
            *q = std::collections::VecDeque::new();
        }
        r
    }

    /// The relay has ended: requests still waiting are dropped (their
    /// callers are told the console is gone) and no more are taken.
    pub(super) fn close_attach(&self) {
        lock(&self.attaches).take();
    }

    /// Stops the relay and waits for it.
    pub(super) async fn stop(&self) -> Handover {
        self.stop.cancel();
        let task = lock(&self.task).take();
        match task {
            Some(task) => task.await.unwrap_or_default(),
            None => Handover::default(),
        }
    }

    /// The domain the console belongs to.
    pub fn domain(&self) -> Option<Domain> {
        lock(&self.owner).clone()
    }

    /// Makes a console that belongs to no domain `domain`'s; true if it is
    /// `domain`'s now (it was already, or was no one's).
    pub fn claim(&self, domain: &Domain) -> bool {
        let mut owner = lock(&self.owner);
        match &*owner {
            Some(o) => o.uuid == domain.uuid,
            None => {
                *owner = Some(domain.clone());
                true
            }
        }
    }

    /// Guest output that slow clients, viewers and followers of the
    /// console's log did not get, summed over them (ListLogs and the
    /// metrics show this same figure).
    pub fn bytes_dropped_for_clients(&self) -> u64 {
        self.stats.bytes_dropped_for_clients.load(Relaxed)
            + self.log.as_ref().map_or(0, |l| l.followers_dropped())
    }

    /// Whether RemoveConsole is closing this console for good.
    pub fn removing(&self) -> bool {
        self.removing.load(Relaxed)
    }

    /// Removed because its domain left by live migration.
    pub fn migrated(&self) -> bool {
        self.migrated.load(Relaxed)
    }

    /// The socket files, for removal when the console ends.
    pub fn sockets(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.guest_socket),
            Some(&self.client_socket),
            self.view_socket.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }
}
