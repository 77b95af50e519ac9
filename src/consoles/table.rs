//! `Consoles`: every console by name, and how one is created and removed.
//!
//! A console is three listening sockets under `RUNDIR/consoles/` (`NAME.guest`
//! for QEMU, `NAME.client` for people and tools, `NAME.view` for read-only
//! watchers) and one relay task that owns them (see `relay`). The handle kept
//! here holds the console's figures and the means to stop it.
//!
//! `AttachConsole` reaches the relay through the handle too: the caller's
//! end of a fresh socket pair is handed to the relay as a client, with the
//! caller's credentials, and the relay answers whether it may write
//! (`writers`).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use tokio::{
    net::{UnixListener, UnixStream},
    sync::oneshot,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use super::{
    console::{
        Adopted, AttachError, AttachRequest, Console, ConsoleError, Handover, Listeners, Owner,
        RemoveError, Settings, Stats,
    },
    relay,
    writers::Who,
};
use crate::{fdstore::Kept, lock, logs::name::LogName};

/// Every console.
#[derive(Debug)]
pub struct Consoles {
    dir: PathBuf,
    max: usize,
    map: Mutex<BTreeMap<LogName, Arc<Console>>>,
    /// Parent of every console's token: the daemon's shutdown.
    shutdown: CancellationToken,
}

impl Consoles {
    pub fn new(runtime_dir: &Path, max: usize, shutdown: CancellationToken) -> Self {
        Self {
            dir: runtime_dir.join("consoles"),
            max,
            map: Mutex::default(),
            shutdown,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Binds the console's sockets and starts its relay. Must run inside
    /// the runtime. On error nothing is left behind.
    pub fn create(&self, settings: Settings) -> Result<Arc<Console>, ConsoleError> {
        self.create_or_adopt(settings, None)
    }

    /// Starts a console a previous guestlogd ran, on its sockets and
    /// connections.
    pub fn adopt(
        &self,
        settings: Settings,
        listeners: Listeners,
        adopted: Adopted,
    ) -> Result<Arc<Console>, ConsoleError> {
        self.create_or_adopt(settings, Some((listeners, adopted)))
    }

    fn create_or_adopt(
        &self,
        settings: Settings,
        adopt: Option<(Listeners, Adopted)>,
    ) -> Result<Arc<Console>, ConsoleError> {
        // Held throughout, so two calls cannot create one name twice.
        let mut map = lock(&self.map);
        if let Some(existing) = map.get(&settings.name) {
            return Err(ConsoleError::Exists {
                owner: existing.domain(),
                name: settings.name,
            });
        }
        if map.len() >= self.max {
            return Err(ConsoleError::Limit(self.max));
        }
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| ConsoleError::Socket { path, source }
        };
        create_dir(&self.dir).map_err(failed(&self.dir))?;
        let path = |kind: &str| self.dir.join(format!("{}.{kind}", settings.name));
        let guest_socket = path("guest");
        let client_socket = path("client");
        let view_socket = settings.viewers.then(|| path("view"));

        let (listeners, adopted) = match adopt {
            Some(a) => a,
            None => {
                let (guest, client, view) = bind_all(
                    &settings,
                    &guest_socket,
                    &client_socket,
                    view_socket.as_deref(),
                )?;
                // Each listener is held once: by the relay, and lent to
                // the store for the next guestlogd.
                let store = settings.registry.store();
                let prefix = format!("console/{}", settings.name);
                let kept = |kind: &str, l| Kept::add(store, format!("{prefix}/{kind}"), l, true);
                let listeners = Listeners {
                    guest: kept("guest-listen", guest),
                    client: kept("client-listen", client),
                    view: view.map(|v| kept("view-listen", v)),
                };
                (listeners, Adopted::default())
            }
        };

        let stop = self.shutdown.child_token();
        let stats = Arc::new(Stats::default());
        let console = Arc::new(Console {
            name: settings.name.clone(),
            guest_socket,
            client_socket,
            view_socket,
            log_path: settings.log.as_ref().map(|l| l.path().to_owned()),
            log: settings.log.clone(),
            boot_log_path: settings.boot.as_ref().map(|l| l.path().to_owned()),
            stats: stats.clone(),
            owner: Mutex::new(settings.domain.clone()),
            settings: settings.clone(),
            stop: stop.clone(),
            removing: AtomicBool::new(false),
            migrated: AtomicBool::new(false),
            task: Mutex::new(None),
            attaches: Mutex::new(Some(Default::default())),
            attach_ready: tokio::sync::Notify::new(),
        });
        let span = info_span!("console", name = %settings.name);
        let fut = relay::run(Box::new(relay::Parts {
            settings,
            listeners,
            adopted,
            stats,
            stop,
            console: console.clone(),
        }));
        let task = tokio::spawn(fut.instrument(span));
        *lock(&console.task) = Some(task);
        info!(name = %console.name, "console created");
        map.insert(console.name.clone(), console.clone());
        Ok(console)
    }

    pub fn get(&self, name: &LogName) -> Option<Arc<Console>> {
        lock(&self.map).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Console>> {
        lock(&self.map).values().cloned().collect()
    }

    /// Attaches `who` to a console over a new socket pair: the relay keeps
    /// one end as a client (or viewer); the other is returned, with
    /// whether its input reaches the guest.
    pub async fn attach(
        &self,
        name: &LogName,
        who: Who,
        viewer: bool,
        force: bool,
    ) -> Result<(std::os::fd::OwnedFd, bool), AttachError> {
        let gone = || AttachError::NoSuchConsole(name.clone());
        let console = self.get(name).ok_or_else(gone)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(AttachError::Socket)?;
        ours.set_nonblocking(true).map_err(AttachError::Socket)?;
        let stream = UnixStream::from_std(ours).map_err(AttachError::Socket)?;
        let (reply, answer) = oneshot::channel();
        let request = AttachRequest {
            stream,
            who,
            viewer,
            force,
            reply,
        };
        console.request_attach(request).map_err(|_| gone())?;
        match answer.await {
            Ok(Ok(writer)) => Ok((theirs.into(), writer)),
            Ok(Err((what, max))) => Err(AttachError::Limit { what, max }),
            // The console stopped before it took the client.
            Err(_) => Err(gone()),
        }
    }

    /// Stops a console, waits until its connections are closed and its
    /// sockets removed, then forgets it. With `owner`, only a console that
    /// belongs to the domain of that UUID. `migrated`: the domain left by
    /// live migration, which the console's log and clients are told.
    pub async fn remove(
        &self,
        name: &LogName,
        owner: Option<&str>,
        migrated: bool,
    ) -> Result<(), RemoveError> {
        let console = {
            let map = lock(&self.map);
            let console = map
                .get(name)
                .ok_or_else(|| RemoveError::NoSuchConsole(name.clone()))?;
            let domain = console.domain();
            if owner.is_some_and(|uuid| domain.as_ref().is_none_or(|d| d.uuid != uuid)) {
                return Err(RemoveError::Owned {
                    name: name.clone(),
                    owner: domain,
                });
            }
            console.migrated.store(migrated, Relaxed);
            console.removing.store(true, Relaxed);
            console.clone()
        };
        console.stop().await;
        lock(&self.map).remove(name);
        console.settings.registry.touch();
        Ok(())
    }

    /// Stops every console and waits for them, at shutdown; returns what
    /// each handed over.
    pub async fn stop_all(&self) -> BTreeMap<LogName, Handover> {
        let mut out = BTreeMap::new();
        for console in self.all() {
            out.insert(console.name.clone(), console.stop().await);
        }
        out
    }
}

/// The guest's, the clients' and (with viewers) the viewers' listeners.
type Bound = (UnixListener, UnixListener, Option<UnixListener>);

fn bind_all(
    settings: &Settings,
    guest: &Path,
    client: &Path,
    view: Option<&Path>,
) -> Result<Bound, ConsoleError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| ConsoleError::Socket { path, source }
    };
    let mut bound = Vec::new();
    let mut listen = |p: &Path| -> Result<UnixListener, ConsoleError> {
        let l = listen(p, settings.owner).map_err(failed(p))?;
        bound.push(p.to_owned());
        Ok(l)
    };
    let listeners = (|| {
        Ok((
            listen(guest)?,
            listen(client)?,
            view.map(&mut listen).transpose()?,
        ))
    })();
    if listeners.is_err() {
        for p in bound {
            let _ = fs::remove_file(p);
        }
    }
    listeners
}

/// The consoles' directory, searchable by everyone whatever the umask
/// (libvirt's virtlogd.service has UMask=077): QEMU runs as its own user,
/// and each socket's own owner and mode decide who may connect.
fn create_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Binds a listening socket with the given owner and mode. A stale file
/// from an earlier run is replaced: no live console has this name.
fn listen(path: &Path, owner: Owner) -> std::io::Result<UnixListener> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let std = std::os::unix::net::UnixListener::bind(path)?;
    let result = (|| {
        if owner.uid.is_some() || owner.gid.is_some() {
            nix::unistd::chown(
                path,
                owner.uid.map(nix::unistd::Uid::from_raw),
                owner.gid.map(nix::unistd::Gid::from_raw),
            )?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(owner.mode))?;
        std.set_nonblocking(true)?;
        UnixListener::from_std(std)
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}
