//! A console's clients: the table its relay fans output out to, each
//! client's pair of tasks, and who among them may type.
//!
//! The relay owns one `Clients`. Output goes to every client without
//! waiting: straight to its socket while it keeps up, else into its
//! bounded queue (`OutputQueue`), which its writer task drains at the
//! client's pace. Its reader task sends input to the relay, which writes
//! it to the guest. Every attach, detach and take-over is logged with the
//! client's uid and pid (rate-limited: anyone who may connect to
//! NAME.client can make them), never into the guest's log.

use std::{
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
    net::UnixStream,
    sync::{Notify, mpsc},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use super::{
    console::{Handover, Pending, Settings, Stats},
    writers::{Arbiter, NewWriter, Who},
};
use crate::{
    lock,
    logs::{
        name::LogName,
        queue::{Output, OutputQueue, Pushed, drop_marker},
        registry::Registry,
    },
};

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

/// Where a new client's output starts.
pub(super) enum Start {
    /// The console's latest output.
    Replay(Vec<u8>),
    /// A client carried over from a previous guestlogd, with what was
    /// still queued for it.
    Adopted { fd_name: String, pending: Vec<u8> },
}

/// Every client of one console; owned by its relay.
pub(super) struct Clients {
    settings: Settings,
    stats: Arc<Stats>,
    /// Where clients that may write send their input, to the relay.
    input_tx: mpsc::Sender<Bytes>,
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
    pub(super) fn new(
        settings: Settings,
        stats: Arc<Stats>,
        input_tx: mpsc::Sender<Bytes>,
    ) -> Self {
        let arbiter = Arbiter::new(settings.writers);
        Self {
            settings,
            stats,
            input_tx,
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

    /// Refuses a client (or viewer) past the console's limit, telling it
    /// in-band; returns that limit.
    pub(super) fn refuse_if_full(
        &self,
        stream: &UnixStream,
        viewer: bool,
        who: Who,
    ) -> Option<usize> {
        let stats = &self.stats;
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
            return Some(max);
        }
        None
    }

    /// Starts a client (or, with `viewer`, a read-only watcher): first
    /// `start`, then live output. `force` takes the writer's place.
    /// Returns whether it may write.
    pub(super) fn add(
        &mut self,
        stream: UnixStream,
        viewer: bool,
        start: Start,
        who: Who,
        force: bool,
    ) -> bool {
        let stats = self.stats.clone();
        let counter = if viewer {
            &stats.viewers
        } else {
            &stats.clients
        };
        let queue = Arc::new(OutputQueue::new(self.settings.queue, self.settings.slow));
        let store = self.settings.registry.store();
        let carried = matches!(start, Start::Adopted { .. });
        let fd_name = match start {
            // A client carried over from a previous guestlogd: it saw the
            // replay then; it gets what was still queued for it.
            Start::Adopted { fd_name, pending } => {
                queue.start_with(pending);
                fd_name
            }
            Start::Replay(replay) => {
                queue.start_with(replay);
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
        self.tasks.spawn(send_output(
            socket.clone(),
            queue.clone(),
            stop.clone(),
            guard.clone(),
        ));
        self.tasks.spawn(take_input(
            socket.clone(),
            input,
            may_write.clone(),
            stop.clone(),
            guard,
        ));
        self.table.push(Client {
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

    /// Output for every client: straight to its socket if it keeps up,
    /// else into its queue. True if a client's writer task was woken.
    pub(super) fn push(&mut self, out: &mut Output<'_>) -> bool {
        let stats = &self.stats;
        let mut woke = false;
        self.table
            .retain(|c| match c.queue.push(out, |d| c.socket.try_write(d)) {
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
            });
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

    /// Closes every client for good, at the console's end.
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

    pub(super) async fn close(&mut self) {
        for c in self.table.drain(..) {
            c.stop.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
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

/// What a client that types while another writes is told, once until it
/// may write again.
const READ_ONLY: &[u8] =
    b"\r\n[guestlogd: another client is the writer; input dropped (attach --force takes over)]\r\n";

/// What a client that types while no guest is connected is told, once.
const NO_GUEST: &[u8] = b"\r\n[guestlogd: no guest is connected; input dropped]\r\n";
