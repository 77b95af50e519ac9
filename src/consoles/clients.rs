//! A console's clients: the table its relay fans output out to, and who
//! among them may type (each client's task is `client`).
//!
//! The relay owns one `Clients`. Output goes to every client from the
//! relay's one buffer: straight to its socket while it keeps up, else into
//! its bounded queue (`OutputQueue`), which its task drains at the
//! client's pace. A client whose queue is full is waited for, a little
//! (`CLIENT_WAIT`, at most that long per read over all clients, and once
//! per lag until it has caught up), so that a client that keeps up but was
//! descheduled for a moment loses nothing; past that its oldest output is
//! dropped, or it is disconnected, and the guest goes on. One task per
//! client sends its backlog and takes its input (`Input`), which the relay
//! writes to the guest. Every attach, detach and take-over is logged with
//! the client's uid and pid (rate-limited: anyone who may connect to
//! NAME.client can make them), never into the guest's log.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{net::UnixStream, sync::Notify, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    client::{Attached, Task, serve},
    console::{Handover, Pending, Settings, Stats},
    input::Input,
    writers::{Arbiter, NewWriter, Who},
};
use crate::{
    fdstore::Kept,
    lock,
    logs::{
        queue::{Output, OutputQueue, Pushed, drop_marker},
        seats::Seat,
    },
};

/// How long the guest may wait, per read, for clients whose queues are
/// full; and how long one client may make it wait before it has caught up
/// again. Long enough for a client descheduled on a busy host, short
/// enough that a stalled one costs the guest one pause.
pub(super) const CLIENT_WAIT: Duration = Duration::from_millis(250);

/// The relay's end of one client.
struct Client {
    /// The arbiter's name for it.
    id: u64,
    who: Who,
    /// Whether its input goes to the guest; read by its reader task.
    may_write: Arc<AtomicBool>,
    fd_name: String,
    queue: Arc<OutputQueue>,
    /// Shared with the client's task, for writes that need no wait; the
    /// one descriptor, also in the store.
    socket: Arc<Kept<UnixStream>>,
    stop: CancellationToken,
    /// How long the guest may still wait for this client before it has
    /// caught up (its queue emptied) again.
    patience: Duration,
}

/// A new client's connection and where its output starts.
pub(super) enum Start {
    /// A new connection: the console's latest output first.
    Replay(UnixStream, Vec<u8>),
    /// A client carried over from a previous guestlogd, with what was
    /// still queued for it.
    Adopted(Kept<UnixStream>, Vec<u8>),
}

impl Start {
    pub(super) fn stream(&self) -> &UnixStream {
        match self {
            Self::Replay(s, _) => s,
            Self::Adopted(s, _) => s,
        }
    }
}

/// Every client of one console; owned by its relay.
pub(super) struct Clients {
    settings: Settings,
    stats: Arc<Stats>,
    /// Where clients that may write put their input, for the relay.
    input: Arc<Input>,
    table: Vec<Client>,
    tasks: TaskTracker,
    /// Set when the console is handed over: clients that end then stay in
    /// the descriptor store for the next guestlogd.
    keep: Arc<AtomicBool>,
    /// Told when a client ends, so that its queue and socket are freed now
    /// rather than at the next output, which may never come.
    left: Arc<Notify>,
    /// Who may type.
    arbiter: Arbiter,
    next_id: u64,
}

impl Clients {
    pub(super) fn new(settings: Settings, stats: Arc<Stats>, input: Arc<Input>) -> Self {
        let arbiter = Arbiter::new(settings.writers);
        Self {
            settings,
            stats,
            input,
            table: Vec::new(),
            tasks: TaskTracker::new(),
            keep: Arc::new(AtomicBool::new(false)),
            left: Arc::new(Notify::new()),
            arbiter,
            next_id: 0,
        }
    }

    /// Notified whenever a client ends (`forget_gone` then frees it).
    pub(super) fn left(&self) -> Arc<Notify> {
        self.left.clone()
    }

    /// A seat for a new client (or viewer), or the limit that refuses it,
    /// told to it in-band: the console's `max-clients` (for clients and
    /// separately viewers) or the host's `max-clients-total`. A client
    /// `carried` over from a previous guestlogd is never refused: it is
    /// connected already.
    pub(super) fn seat(
        &self,
        stream: &UnixStream,
        viewer: bool,
        who: Who,
        carried: bool,
    ) -> Result<Seat, (&'static str, usize)> {
        let stats = &self.stats;
        let counter = if viewer {
            &stats.viewers
        } else {
            &stats.clients
        };
        let seats = self.settings.registry.seats();
        let max = self.settings.max_clients;
        let refused = if carried {
            return Ok(seats.take_past_cap());
        } else if counter.load(Relaxed) >= max {
            (if viewer { "viewers" } else { "clients" }, max)
        } else {
            match seats.take() {
                Some(seat) => return Ok(seat),
                None => ("clientsTotal", seats.max()),
            }
        };
        let (what, max) = refused;
        let shown = match what {
            "clientsTotal" => "clients on this host",
            other => other,
        };
        let msg = format!("\r\n[guestlogd: LimitReached: {max} {shown}]\r\n");
        let _ = stream.try_write(msg.as_bytes());
        crate::limited!(
            info,
            console = %self.settings.name,
            uid = who.uid,
            pid = who.pid,
            what,
            max,
            "console {}: attach refused: {max} {shown} already (uid {} pid {})",
            self.settings.name,
            who.uid,
            who.pid
        );
        Err(refused)
    }

    /// Starts a client (or, with `viewer`, a read-only watcher): first
    /// `start`, then live output. `force` takes the writer's place.
    /// Returns whether it may write.
    pub(super) fn add(
        &mut self,
        start: Start,
        viewer: bool,
        who: Who,
        force: bool,
        seat: Seat,
    ) -> bool {
        let stats = self.stats.clone();
        let counter = if viewer {
            &stats.viewers
        } else {
            &stats.clients
        };
        let queue = Arc::new(OutputQueue::new(self.settings.queue, self.settings.slow));
        let store = self.settings.registry.store();
        let carried = matches!(start, Start::Adopted(..));
        let socket = match start {
            // A client carried over from a previous guestlogd: it saw the
            // replay then; it gets what was still queued for it.
            Start::Adopted(stream, pending) => {
                queue.start_with(pending);
                stream
            }
            Start::Replay(stream, replay) => {
                // In the store before its first byte: a client that saw
                // anything survives a crash from then on.
                let kind = if viewer { "viewer" } else { "client" };
                let name = format!("console/{}/{kind}/{}", self.settings.name, store.id());
                let stream = Kept::add(store, name, stream, false);
                // Most of it goes straight to the new connection, whose
                // socket buffer is empty: nothing of it is kept here.
                let sent = stream.try_write(&replay).unwrap_or_default();
                queue.start_with(replay.get(sent..).map(<[u8]>::to_vec).unwrap_or_default());
                stream
            }
        };
        let fd_name = socket.name().to_owned();
        self.next_id += 1;
        let id = self.next_id;
        let (may_write, change) = if viewer {
            (false, None)
        } else {
            self.arbiter.join(id, force)
        };
        lock(&self.stats.peers).push((fd_name.clone(), who));
        // Not a child of the console's token: at a hand-over the relay must
        // mark the clients as kept before they stop.
        let stop = CancellationToken::new();
        counter.fetch_add(1, Relaxed);
        let attached = Attached {
            stats: self.stats.clone(),
            viewer,
            fd_name: fd_name.clone(),
            registry: self.settings.registry.clone(),
            keep: self.keep.clone(),
            left: self.left.clone(),
            console: self.settings.name.clone(),
            who,
            _seat: seat,
        };
        // One descriptor, shared by the relay's direct writes and the
        // client's task (tokio's write half would shut the socket down
        // when dropped, ending the session at a hand-over).
        let socket = Arc::new(socket);
        let may_write = Arc::new(AtomicBool::new(may_write));
        let fut = serve(Task {
            socket: socket.clone(),
            queue: queue.clone(),
            input: (!viewer).then(|| self.input.clone()),
            may_write: may_write.clone(),
            stop: stop.clone(),
            attached,
        });
        self.tasks.spawn(fut);
        self.table.push(Client {
            id,
            who,
            may_write: may_write.clone(),
            fd_name,
            queue,
            socket,
            stop,
            patience: CLIENT_WAIT,
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
        writer
    }

    /// Drops the clients that have ended; if the writer was one of them,
    /// the next writer is told.
    pub(super) fn forget_gone(&mut self) {
        self.table.retain(|c| !c.stop.is_cancelled());
        let live: Vec<u64> = self.table.iter().map(|c| c.id).collect();
        if let Some(change) = self.arbiter.retain(|id| live.contains(&id)) {
            self.announce(change);
        }
        self.publish_writer();
    }

    /// Applies a change of writer: flags, an in-band line to both clients,
    /// and the audit line.
    fn announce(&mut self, change: NewWriter) {
        let name = self.settings.name.clone();
        let Some(new) = self.table.iter().find(|c| c.id == change.id) else {
            return;
        };
        new.may_write.store(true, Relaxed);
        let who = new.who;
        notice(new, &format!("you are now the writer of {name}"));
        match change.previous {
            Some(previous) => {
                if let Some(old) = self.table.iter().find(|c| c.id == previous) {
                    old.may_write.store(false, Relaxed);
                    notice(
                        old,
                        &format!("{name} is now written by uid {} pid {}", who.uid, who.pid),
                    );
                    crate::limited!(
                        info,
                        message_id = crate::logging::events::WRITER_TAKEOVER,
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
            .and_then(|id| self.table.iter().find(|c| c.id == id))
            .map(|c| (c.fd_name.clone(), c.who));
        let mut slot = lock(&self.stats.writer);
        if *slot != writer {
            *slot = writer;
            drop(slot);
            self.settings.registry.touch();
        }
    }

    /// Output for every client, from the one buffer the guest was read
    /// into: straight to its socket if it keeps up, else into its queue,
    /// waiting a little for a full queue (see the module doc). True if a
    /// client's task was woken.
    pub(super) async fn push(&mut self, data: &Bytes) -> bool {
        let mut out = Output::shared(data);
        let mut woke = false;
        let mut closed = false;
        // The guest waits at most this long for all clients of one read.
        let mut deadline = None;
        for c in &mut self.table {
            if c.patience < CLIENT_WAIT && c.queue.is_idle() {
                c.patience = CLIENT_WAIT;
            }
            let send = |d: &[u8]| c.socket.try_write(d);
            let mut pushed = c.queue.push_or_full(&mut out, send, !c.patience.is_zero());
            if pushed == Pushed::Full {
                let now = Instant::now();
                let until = *deadline.get_or_insert(now + CLIENT_WAIT);
                let wait = c.patience.min(until.saturating_duration_since(now));
                let room = tokio::time::timeout(wait, c.queue.room(data.len())).await;
                c.patience = match room {
                    Ok(()) => c.patience.saturating_sub(now.elapsed()),
                    Err(_) => Duration::ZERO,
                };
                let send = |d: &[u8]| c.socket.try_write(d);
                pushed = c.queue.push_or_full(&mut out, send, false);
            }
            match pushed {
                Pushed::Sent | Pushed::Full => {}
                Pushed::Queued { dropped, woke: w } => {
                    self.stats
                        .bytes_dropped_for_clients
                        .fetch_add(dropped as u64, Relaxed);
                    woke |= w;
                }
                Pushed::Closed => {
                    c.stop.cancel();
                    closed = true;
                }
            }
        }
        if closed {
            self.table.retain(|c| !c.stop.is_cancelled());
        }
        woke
    }

    /// Stops every client's tasks without closing its connection, which
    /// stays in the descriptor store; what a client has not been sent is
    /// sent now where it fits, else returned for the next guestlogd.
    pub(super) async fn hand_over(&mut self) -> Handover {
        self.keep.store(true, Relaxed);
        for c in &self.table {
            c.stop.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
        let mut handover = Handover::new();
        for c in self.table.drain(..) {
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
        handover
    }

    /// A line of guestlogd's own to every client and viewer, in order with
    /// their output.
    pub(super) fn notice_all(&mut self, text: &str) {
        for c in &self.table {
            notice(c, text);
        }
    }

    /// Lets every client take what is queued for it, for at most `limit`,
    /// then closes them all.
    pub(super) async fn close_flushed(&mut self, limit: Duration) {
        for c in &self.table {
            c.queue.finish();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
        self.close().await;
    }

    /// Closes every client for good, at the console's end.
    pub(super) async fn close(&mut self) {
        for c in self.table.drain(..) {
            c.stop.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A line of guestlogd's own, in order with the client's output.
fn notice(c: &Client, text: &str) {
    let line = format!("\r\n[guestlogd: {text}]\r\n");
    let _ = c
        .queue
        .push(&mut Output::new(line.as_bytes()), |d| c.socket.try_write(d));
}
