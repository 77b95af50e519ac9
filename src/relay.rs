//! A console's relay: one task owns the guest connection, the log and the
//! client table; each client is a pair of tasks.
//!
//! The relay reads the guest, writes what it read to the log (a slow disk
//! thus slows the guest, through the socket, and loses nothing), then
//! queues it for every client without waiting (`queue`). A client's writer
//! task drains its own queue at the client's pace; its reader task sends
//! input to the relay, which writes it to the guest without blocking.
//! Neither the guest nor the log ever waits for a client, and a guest with
//! no client and no log is still read, so it never stalls.
//!
//! Beside that path: the boot log (`boot`) gets the first bytes after each
//! guest connection, and with one writer (`writers`) only the writer's
//! input reaches the guest. Every attach, detach and take-over is logged
//! with the client's uid and pid (rate-limited: anyone who may connect to
//! NAME.client can make them), never into the guest's log.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::Interest,
    net::{UnixListener, UnixStream},
    sync::{Notify, mpsc},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    boot::BootLog,
    console::{Adopted, AttachRequest, Console, Handover, Settings, Stats},
    name::LogName,
    queue::{Output, OutputQueue, Pushed, drop_marker},
    registry::{Registry, Wait},
    state::Pending,
    writers::{Arbiter, NewWriter, Who},
};

/// The most read from the guest at once.
const CHUNK: usize = 64 * 1024;
/// Client input waiting for the guest to read it; past this, clients that
/// type wait (only they do).
const INPUT_CAP: usize = 64 * 1024;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// A console's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    pub guest: UnixListener,
    pub client: UnixListener,
    pub view: Option<UnixListener>,
}

/// The relay's end of one client.
struct Client {
    /// The arbiter's name for it.
    id: u64,
    who: Who,
    /// Whether its input goes to the guest; read by its reader task.
    may_write: Arc<AtomicBool>,
    fd_name: String,
    queue: Arc<OutputQueue>,
    /// Shared with the client's writer task, for writes that need no wait.
    socket: Arc<UnixStream>,
    stop: CancellationToken,
}

struct Relay {
    settings: Settings,
    stats: Arc<Stats>,
    guest: Option<UnixStream>,
    /// Client input not yet taken by the guest.
    input: VecDeque<Bytes>,
    input_bytes: usize,
    input_tx: mpsc::Sender<Bytes>,
    clients: Vec<Client>,
    client_tasks: TaskTracker,
    /// The latest output, for replay, when there is no log to read it from.
    ring: VecDeque<u8>,
    /// The guest connection's name in the descriptor store.
    guest_name: String,
    /// Set when the console is handed over: clients that end then stay in
    /// the descriptor store for the next guestlogd.
    keep: Arc<AtomicBool>,
    /// Told when a client ends, so that its queue and socket are freed now
    /// rather than at the next output, which may never come.
    left: Arc<Notify>,
    /// Who may type.
    arbiter: Arbiter,
    next_id: u64,
    boot: Option<BootLog>,
}

/// How an attach went.
enum Attach {
    /// Attached; whether it may write.
    Attached(bool),
    /// Refused: the console has this many clients (or viewers) already.
    Full(usize),
}

/// Runs a console until `stop`. Then, when the console is removed or the
/// daemon stops for good, it closes every connection and removes the
/// sockets; when the daemon hands over to a successor, it leaves every
/// connection open in the descriptor store and returns the clients'
/// unsent output.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    adopted: Adopted,
    stats: Arc<Stats>,
    stop: CancellationToken,
    console: Arc<Console>,
    mut attach_rx: mpsc::Receiver<AttachRequest>,
) -> Handover {
    let (input_tx, mut input_rx) = mpsc::channel(64);
    let guest_name = format!("console/{}/guest", settings.name);
    let arbiter = Arbiter::new(settings.writers);
    let boot = settings
        .boot
        .clone()
        .map(|log| BootLog::resume(log, settings.boot_bytes));
    let mut relay = Relay {
        settings,
        stats,
        guest: None,
        input: VecDeque::new(),
        input_bytes: 0,
        input_tx,
        clients: Vec::new(),
        client_tasks: TaskTracker::new(),
        ring: VecDeque::new(),
        guest_name,
        keep: Arc::new(AtomicBool::new(false)),
        left: Arc::new(Notify::new()),
        arbiter,
        next_id: 0,
        boot,
    };
    if let Some(guest) = adopted.guest {
        relay.guest = Some(guest);
        relay.stats.guest_connected.store(true, Relaxed);
    }
    // The writer a previous guestlogd had joins first, so it stays the
    // writer; the others in the order they first attached (their ids grow),
    // so that the longest attached still takes over when the writer leaves.
    let mut clients = adopted.clients;
    clients.sort_by_key(|c| {
        let id = c
            .fd_name
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        (Some(&c.fd_name) != adopted.writer.as_ref(), id)
    });
    for c in clients {
        let who = c.who.or_else(|| Who::of(&c.stream)).unwrap_or_default();
        relay
            .attach(c.stream, c.viewer, Some((c.fd_name, c.pending)), who, false)
            .await;
    }
    let l = listeners;
    let left = relay.left.clone();
    // A listener whose accept fails (out of FDs) rests a while; the others,
    // and above all the guest's output, go on meanwhile.
    let (mut guest_rest, mut client_rest, mut view_rest) =
        (Rest::default(), Rest::default(), Rest::default());
    loop {
        let wake = [&guest_rest, &client_rest, &view_rest]
            .iter()
            .filter_map(|r| r.until)
            .min();
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = l.guest.accept(), if guest_rest.until.is_none() => match r {
                Ok((s, _)) => {
                    guest_rest.clear();
                    relay.connect_guest(s).await;
                }
                Err(e) => guest_rest.failed(e),
            },
            r = readable(&relay.guest) => match r {
                Ok(()) => {
                    if relay.read_guest().await {
                        // A busy guest keeps this task ready forever, and the
                        // writers it just woke wait in this worker's slot:
                        // let them send before reading more.
                        tokio::task::yield_now().await;
                    }
                }
                Err(_) => relay.guest_gone(),
            },
            r = l.client.accept(), if client_rest.until.is_none() => match r {
                Ok((s, _)) => {
                    client_rest.clear();
                    let who = Who::of(&s).unwrap_or_default();
                    relay.attach(s, false, None, who, false).await;
                }
                Err(e) => client_rest.failed(e),
            },
            r = accept(&l.view), if view_rest.until.is_none() => match r {
                Ok(s) => {
                    view_rest.clear();
                    let who = Who::of(&s).unwrap_or_default();
                    relay.attach(s, true, None, who, false).await;
                }
                Err(e) => view_rest.failed(e),
            },
            () = sleep_until(wake), if wake.is_some() => {
                let now = tokio::time::Instant::now();
                for r in [&mut guest_rest, &mut client_rest, &mut view_rest] {
                    if r.until.is_some_and(|t| t <= now) {
                        r.until = None;
                    }
                }
            }
            Some(data) = input_rx.recv(), if relay.input_bytes < INPUT_CAP => {
                // Input typed while no guest is connected is dropped (the
                // client was told): it must never reach a later guest.
                if relay.guest.is_some() {
                    relay.input_bytes += data.len();
                    relay.input.push_back(data);
                    relay.write_guest();
                }
            }
            r = writable(&relay.guest), if !relay.input.is_empty() => match r {
                Ok(()) => relay.write_guest(),
                Err(_) => relay.guest_gone(),
            },
            () = left.notified() => relay.forget_gone(),
            Some(r) = attach_rx.recv() => {
                let answer = match relay.attach(r.stream, r.viewer, None, r.who, r.force).await {
                    Attach::Attached(writer) => Ok(writer),
                    Attach::Full(max) => Err(max),
                };
                // A caller that gave up meanwhile: its end closes, and the
                // client with it.
                let _ = r.reply.send(answer);
            }
        }
    }
    let registry = relay.settings.registry.clone();
    if registry.handing_over() && !console.removing() {
        return relay.hand_over().await;
    }
    // What the guest has sent is taken and logged before the console ends.
    relay.drain_guest().await;
    for c in relay.clients.drain(..) {
        c.stop.cancel();
    }
    relay.client_tasks.close();
    relay.client_tasks.wait().await;
    let store = registry.store();
    store.remove(&relay.guest_name);
    for kind in ["guest-listen", "client-listen", "view-listen"] {
        store.remove(&format!("console/{}/{kind}", console.name));
    }
    for path in console.sockets() {
        let _ = std::fs::remove_file(path);
    }
    registry.touch();
    info!("console closed");
    Handover::default()
}

impl Relay {
    /// A (re)connecting guest replaces the old connection once the old
    /// one's output has been taken.
    async fn connect_guest(&mut self, guest: UnixStream) {
        let store = self.settings.registry.store().clone();
        if self.guest.is_some() {
            self.drain_guest().await;
            store.remove(&self.guest_name);
            crate::limited!(info, "guest reconnected");
        } else {
            crate::limited!(info, "guest connected");
        }
        // No polling: a guest that hung up may have left output unread.
        store.add(self.guest_name.clone(), guest.as_fd(), false);
        self.settings.registry.touch();
        // After the old connection's output was taken: that belongs to
        // the boot before.
        if let Some(boot) = &mut self.boot {
            boot.guest_connected().await;
        }
        self.guest = Some(guest);
        self.stats.guest_connected.store(true, Relaxed);
    }

    fn guest_gone(&mut self) {
        // Input queued for this guest is for this guest only.
        self.input.clear();
        self.input_bytes = 0;
        if self.guest.take().is_some() {
            crate::limited!(info, "guest disconnected");
            self.settings.registry.store().remove(&self.guest_name);
            self.settings.registry.touch();
        }
        self.stats.guest_connected.store(false, Relaxed);
    }

    /// Stops without closing anything: output already read is in the log,
    /// output not yet read stays in the kernel, and what clients have not
    /// been sent is sent now where it fits, else returned.
    async fn hand_over(mut self) -> Handover {
        self.keep.store(true, Relaxed);
        for c in &self.clients {
            c.stop.cancel();
        }
        self.client_tasks.close();
        self.client_tasks.wait().await;
        let mut handover = Handover::new();
        for c in self.clients.drain(..) {
            let batch = c.queue.take();
            let mut data = Vec::new();
            if batch.dropped > 0 {
                data.extend_from_slice(drop_marker(batch.dropped).as_bytes());
            }
            for chunk in &batch.chunks {
                data.extend_from_slice(chunk);
            }
            let mut sent = 0;
            while sent < data.len() {
                match c.socket.try_write(&data[sent..]) {
                    Ok(n) if n > 0 => sent += n,
                    _ => break,
                }
            }
            if sent < data.len() {
                use base64::Engine as _;
                handover.insert(
                    c.fd_name,
                    Pending {
                        data: base64::engine::general_purpose::STANDARD.encode(&data[sent..]),
                        dropped: 0,
                    },
                );
            }
        }
        info!("console handed over");
        handover
    }

    /// One read from the guest, passed on at once. True if a client's
    /// writer task was woken to send some of it.
    async fn read_guest(&mut self) -> bool {
        match self.take_guest_output() {
            Some(data) => self.output(data).await,
            None => false,
        }
    }

    /// One read from the guest, out of the thread's buffer (the log's job
    /// runs on another thread); `None` if it had nothing or left.
    fn take_guest_output(&mut self) -> Option<Bytes> {
        BUFFER.with_borrow_mut(|buf| {
            let guest = self.guest.as_ref()?;
            match guest.try_read(buf) {
                Ok(0) => self.guest_gone(),
                Ok(n) => return Some(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!(error = %e, "guest read failed");
                    self.guest_gone();
                }
            }
            None
        })
    }

    /// Reads until the guest has nothing more to give right now.
    async fn drain_guest(&mut self) {
        loop {
            let before = self.stats.bytes_from_guest.load(Relaxed);
            self.read_guest().await;
            if self.guest.is_none() || self.stats.bytes_from_guest.load(Relaxed) == before {
                return;
            }
        }
    }

    /// Guest output: to the log first, then to every client, straight to
    /// its socket if it keeps up, else into its queue. True if a client's
    /// writer task was woken.
    async fn output(&mut self, data: Bytes) -> bool {
        self.stats
            .bytes_from_guest
            .fetch_add(data.len() as u64, Relaxed);
        match &self.settings.log {
            // A refused write is counted and logged by the log itself. The
            // guest is not read again until it is done: a slow disk slows
            // the guest, and what was read is never only in memory twice.
            Some(log) => {
                let _ = log.write(Wait::Forever, data.clone()).await;
            }
            None => self.remember(&data),
        }
        if let Some(boot) = &mut self.boot {
            boot.output(&data).await;
        }
        let stats = &self.stats;
        let mut out = Output::shared(&data);
        let mut woke = false;
        self.clients.retain(
            |c| match c.queue.push(&mut out, |d| c.socket.try_write(d)) {
                Pushed::Sent => true,
                Pushed::Queued { dropped, woke: w } => {
                    stats
                        .bytes_dropped_for_clients
                        .fetch_add(dropped as u64, Relaxed);
                    woke |= w;
                    true
                }
                Pushed::Closed => {
                    c.stop.cancel();
                    false
                }
            },
        );
        woke
    }

    fn remember(&mut self, data: &[u8]) {
        let cap = self.settings.replay;
        if cap == 0 {
            return;
        }
        let data = &data[data.len().saturating_sub(cap)..];
        let excess = (self.ring.len() + data.len()).saturating_sub(cap);
        self.ring.drain(..excess);
        self.ring.extend(data);
    }

    /// Writes queued input without blocking; what the guest does not take
    /// now waits for it to become writable.
    fn write_guest(&mut self) {
        let Some(guest) = &self.guest else { return };
        while let Some(front) = self.input.front_mut() {
            match guest.try_write(front) {
                Ok(n) => {
                    self.stats.bytes_to_guest.fetch_add(n as u64, Relaxed);
                    self.input_bytes -= n;
                    if n == front.len() {
                        self.input.pop_front();
                    } else {
                        *front = front.slice(n..);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "guest write failed");
                    return self.guest_gone();
                }
            }
        }
    }

    /// Starts a client (or, with `viewer`, a read-only watcher): first the
    /// replay, then live output. `force` takes the writer's place.
    async fn attach(
        &mut self,
        stream: UnixStream,
        viewer: bool,
        adopted: Option<(String, Vec<u8>)>,
        who: Who,
        force: bool,
    ) -> Attach {
        let stats = self.stats.clone();
        let counter = if viewer {
            &stats.viewers
        } else {
            &stats.clients
        };
        let max = self.settings.max_clients;
        if counter.load(Relaxed) >= max {
            let what = if viewer { "viewers" } else { "clients" };
            let msg = format!("\r\n[guestlogd: LimitReached: {max} {what}]\r\n");
            let _ = stream.try_write(msg.as_bytes());
            crate::limited!(
                info,
                console = %self.settings.name,
                uid = who.uid,
                pid = who.pid,
                what,
                max,
                "console {}: attach refused: {max} {what} already (uid {} pid {})",
                self.settings.name,
                who.uid,
                who.pid
            );
            return Attach::Full(max);
        }
        self.forget_gone();

        let queue = Arc::new(OutputQueue::new(self.settings.queue, self.settings.slow));
        let store = self.settings.registry.store();
        let carried = adopted.is_some();
        let fd_name = match adopted {
            // A client carried over from a previous guestlogd: it saw the
            // replay then; it gets what was still queued for it.
            Some((name, pending)) => {
                queue.start_with(pending);
                name
            }
            None => {
                queue.start_with(self.replay().await);
                let kind = if viewer { "viewer" } else { "client" };
                let name = format!("console/{}/{kind}/{}", self.settings.name, store.id());
                store.add(name.clone(), stream.as_fd(), false);
                name
            }
        };
        self.next_id += 1;
        let id = self.next_id;
        let (may_write, change) = if viewer {
            (false, None)
        } else {
            self.arbiter.join(id, force)
        };
        lock(&self.stats.peers).insert(fd_name.clone(), who);
        // Not a child of the console's token: at a hand-over the relay must
        // mark the clients as kept before they stop.
        let stop = CancellationToken::new();
        counter.fetch_add(1, Relaxed);
        let guard = Arc::new(Attached {
            stats: self.stats.clone(),
            viewer,
            fd_name: fd_name.clone(),
            registry: self.settings.registry.clone(),
            keep: self.keep.clone(),
            left: self.left.clone(),
            console: self.settings.name.clone(),
            who,
        });
        // Shared, not split: tokio's write half shuts the socket down when
        // dropped, which would end the client's session at a hand-over.
        let socket = Arc::new(stream);
        let may_write = Arc::new(AtomicBool::new(may_write));
        let input = (!viewer).then(|| self.input_tx.clone());
        self.client_tasks.spawn(send_output(
            socket.clone(),
            queue.clone(),
            stop.clone(),
            guard.clone(),
        ));
        self.client_tasks.spawn(take_input(
            socket.clone(),
            input,
            may_write.clone(),
            stop.clone(),
            guard,
        ));
        self.clients.push(Client {
            id,
            who,
            may_write: may_write.clone(),
            fd_name,
            queue,
            socket,
            stop,
        });
        let writer = may_write.load(Relaxed);
        if !carried {
            crate::limited!(
                info,
                console = %self.settings.name,
                uid = who.uid,
                pid = who.pid,
                viewer,
                writer,
                "console {}: {} attached (uid {} pid {}){}",
                self.settings.name,
                if viewer { "viewer" } else { "client" },
                who.uid,
                who.pid,
                match (viewer, writer) {
                    (true, _) => "",
                    (false, true) => ", writes",
                    (false, false) => ", reads only: another client writes",
                }
            );
        }
        if let Some(change) = change {
            self.announce(change);
        }
        self.publish_writer();
        self.settings.registry.touch();
        Attach::Attached(writer)
    }

    /// Drops the clients that have ended; if the writer was one of them,
    /// the next writer is told.
    fn forget_gone(&mut self) {
        self.clients.retain(|c| !c.stop.is_cancelled());
        let live: Vec<u64> = self.clients.iter().map(|c| c.id).collect();
        if let Some(change) = self.arbiter.retain(|id| live.contains(&id)) {
            self.announce(change);
        }
        self.publish_writer();
    }

    /// Applies a change of writer: flags, an in-band line to both clients,
    /// and the audit line.
    fn announce(&mut self, change: NewWriter) {
        let name = self.settings.name.clone();
        let Some(new) = self.clients.iter().find(|c| c.id == change.id) else {
            return;
        };
        new.may_write.store(true, Relaxed);
        let who = new.who;
        notice(new, &format!("you are now the writer of {name}"));
        match change.previous {
            Some(previous) => {
                if let Some(old) = self.clients.iter().find(|c| c.id == previous) {
                    old.may_write.store(false, Relaxed);
                    notice(
                        old,
                        &format!("{name} is now written by uid {} pid {}", who.uid, who.pid),
                    );
                    crate::limited!(
                        info,
                        console = %name,
                        uid = who.uid,
                        pid = who.pid,
                        previous_uid = old.who.uid,
                        previous_pid = old.who.pid,
                        "console {name}: writer taken over by uid {} pid {} from uid {} pid {}",
                        who.uid,
                        who.pid,
                        old.who.uid,
                        old.who.pid
                    );
                }
            }
            None => crate::limited!(
                info,
                console = %name,
                uid = who.uid,
                pid = who.pid,
                "console {name}: the writer left; uid {} pid {} writes now",
                who.uid,
                who.pid
            ),
        }
    }

    /// Shows the writer to ListLogs and to the saved state.
    fn publish_writer(&self) {
        let writer = self
            .arbiter
            .writer()
            .and_then(|id| self.clients.iter().find(|c| c.id == id))
            .map(|c| (c.fd_name.clone(), c.who));
        let mut slot = lock(&self.stats.writer);
        if *slot != writer {
            *slot = writer;
            drop(slot);
            self.settings.registry.touch();
        }
    }

    async fn replay(&self) -> Vec<u8> {
        let n = self.settings.replay;
        match &self.settings.log {
            Some(_) if n == 0 => Vec::new(),
            Some(log) => log.tail(Wait::Forever, n).await.unwrap_or_else(|e| {
                warn!(error = %crate::registry::error_chain(&e), "cannot read the replay");
                Vec::new()
            }),
            None => self.ring.iter().copied().collect(),
        }
    }
}

/// Counts a client while either of its tasks runs; when both end, the
/// connection is closed for good unless the console is being handed over.
struct Attached {
    stats: Arc<Stats>,
    viewer: bool,
    fd_name: String,
    registry: Arc<Registry>,
    keep: Arc<AtomicBool>,
    left: Arc<Notify>,
    console: LogName,
    who: Who,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let counter = if self.viewer {
            &self.stats.viewers
        } else {
            &self.stats.clients
        };
        counter.fetch_sub(1, Relaxed);
        if !self.keep.load(Relaxed) {
            lock(&self.stats.peers).remove(&self.fd_name);
            self.registry.store().remove(&self.fd_name);
            self.registry.touch();
            crate::limited!(
                info,
                console = %self.console,
                uid = self.who.uid,
                pid = self.who.pid,
                viewer = self.viewer,
                "console {}: {} detached (uid {} pid {})",
                self.console,
                if self.viewer { "viewer" } else { "client" },
                self.who.uid,
                self.who.pid
            );
        }
        self.left.notify_one();
    }
}

/// A line of guestlogd's own, in order with the client's output.
fn notice(c: &Client, text: &str) {
    let line = format!("\r\n[guestlogd: {text}]\r\n");
    let _ = c
        .queue
        .push(&mut Output::new(line.as_bytes()), |d| c.socket.try_write(d));
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A client's writer: the backlog in its queue, at the client's pace.
async fn send_output(
    w: Arc<UnixStream>,
    queue: Arc<OutputQueue>,
    stop: CancellationToken,
    _attached: Arc<Attached>,
) {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            b = queue.pop() => b,
        };
        let Some(batch) = batch else { break };
        let mut chunks: VecDeque<Bytes> = batch.chunks.into();
        if batch.dropped > 0 {
            chunks.push_front(Bytes::from(drop_marker(batch.dropped)));
        }
        // Sent piece by piece, so that a stop in the middle can put back
        // exactly what the client has not got.
        while let Some(front) = chunks.front_mut() {
            let sent = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    queue.unsend(chunks.into(), 0);
                    return;
                }
                r = write_some(&w, front) => r,
            };
            match sent {
                Ok(n) if n == front.len() => {
                    chunks.pop_front();
                }
                Ok(n) => *front = front.slice(n..),
                Err(_) => {
                    stop.cancel();
                    queue.close();
                    return;
                }
            }
        }
        queue.sent();
    }
    stop.cancel();
    queue.close();
}

/// One read, once the socket has something.
async fn read_some(r: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        r.readable().await?;
        match r.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// One non-blocking write, once the socket can take some bytes.
async fn write_some(w: &UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A client's reader: input to the relay (or, for a viewer or a client
/// that is not the writer, nowhere).
async fn take_input(
    r: Arc<UnixStream>,
    input: Option<mpsc::Sender<Bytes>>,
    may_write: Arc<AtomicBool>,
    stop: CancellationToken,
    attached: Arc<Attached>,
) {
    let mut buf = [0u8; 4096];
    let mut told = false;
    let mut told_read_only = false;
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = read_some(&r, &mut buf) => r,
        };
        let n = match n {
            Ok(0) => break,
            Err(e) => {
                debug!(error = %e, "client read failed");
                break;
            }
            Ok(n) => n,
        };
        if input.is_some() && !may_write.load(Relaxed) {
            if !std::mem::replace(&mut told_read_only, true) {
                let _ = r.try_write(READ_ONLY);
            }
            continue;
        }
        told_read_only = false;
        if input.is_some() && !attached.stats.guest_connected.load(Relaxed) {
            if !std::mem::replace(&mut told, true) {
                // Best effort and never waited for: a notice, not output.
                let _ = r.try_write(NO_GUEST);
            }
            crate::limited!(debug, bytes = n, "input dropped: no guest");
            continue;
        }
        told = false;
        if let Some(tx) = &input {
            let data = Bytes::copy_from_slice(&buf[..n]);
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                r = tx.send(data) => if r.is_err() { return },
            }
        }
    }
    // EOF may be a half-close by a client that still reads its output; the
    // client has gone only once the socket hangs up.
    loop {
        let hung_up = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = r.ready(Interest::WRITABLE) => r.map_or(true, |ready| ready.is_write_closed()),
        };
        if hung_up {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    stop.cancel();
}

async fn readable(guest: &Option<UnixStream>) -> io::Result<()> {
    match guest {
        Some(g) => g.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(guest: &Option<UnixStream>) -> io::Result<()> {
    match guest {
        Some(g) => g.writable().await,
        None => std::future::pending().await,
    }
}

async fn accept(l: &Option<UnixListener>) -> io::Result<UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// A listener resting after failed accepts: 10 ms, doubling to 1 s.
#[derive(Default)]
struct Rest {
    until: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Rest {
    fn failed(&mut self, e: io::Error) {
        crate::limited!(warn, error = %e, "accept failed");
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.until = Some(tokio::time::Instant::now() + self.backoff);
    }

    fn clear(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What a client that types while another writes is told, once until it
/// may write again.
const READ_ONLY: &[u8] =
    b"\r\n[guestlogd: another client is the writer; input dropped (attach --force takes over)]\r\n";

/// What a client that types while no guest is connected is told, once.
const NO_GUEST: &[u8] = b"\r\n[guestlogd: no guest is connected; input dropped]\r\n";
