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

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, Interest},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    console::{Console, Settings, Stats},
    queue::{Output, OutputQueue, Pushed, drop_marker},
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
    queue: Arc<OutputQueue>,
    /// Shared with the client's writer task, for writes that need no wait.
    socket: Arc<OwnedWriteHalf>,
    stop: CancellationToken,
}

struct Relay {
    settings: Settings,
    stats: Arc<Stats>,
    stop: CancellationToken,
    guest: Option<UnixStream>,
    /// Client input not yet taken by the guest.
    input: VecDeque<Bytes>,
    input_bytes: usize,
    input_tx: mpsc::Sender<Bytes>,
    clients: Vec<Client>,
    client_tasks: TaskTracker,
    /// The latest output, for replay, when there is no log to read it from.
    ring: VecDeque<u8>,
}

/// Runs a console until `stop`, then closes every connection and removes
/// its sockets.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    stats: Arc<Stats>,
    stop: CancellationToken,
    console: Arc<Console>,
) {
    let (input_tx, mut input_rx) = mpsc::channel(64);
    let mut relay = Relay {
        settings,
        stats,
        stop: stop.clone(),
        guest: None,
        input: VecDeque::new(),
        input_bytes: 0,
        input_tx,
        clients: Vec::new(),
        client_tasks: TaskTracker::new(),
        ring: VecDeque::new(),
    };
    let l = listeners;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = l.guest.accept() => match r {
                Ok((s, _)) => relay.adopt_guest(s),
                Err(e) => accept_failed(e).await,
            },
            r = readable(&relay.guest) => match r {
                Ok(()) => {
                    if relay.read_guest() {
                        // A busy guest keeps this task ready forever, and the
                        // writers it just woke wait in this worker's slot:
                        // let them send before reading more.
                        tokio::task::yield_now().await;
                    }
                }
                Err(_) => relay.guest_gone(),
            },
            r = l.client.accept() => match r {
                Ok((s, _)) => relay.attach(s, false),
                Err(e) => accept_failed(e).await,
            },
            r = accept(&l.view) => match r {
                Ok(s) => relay.attach(s, true),
                Err(e) => accept_failed(e).await,
            },
            Some(data) = input_rx.recv(), if relay.input_bytes < INPUT_CAP => {
                relay.input_bytes += data.len();
                relay.input.push_back(data);
                relay.write_guest();
            }
            r = writable(&relay.guest), if !relay.input.is_empty() => match r {
                Ok(()) => relay.write_guest(),
                Err(_) => relay.guest_gone(),
            },
        }
    }
    // What the guest has sent is taken and logged before the console ends.
    relay.drain_guest();
    for c in relay.clients.drain(..) {
        c.stop.cancel();
    }
    relay.client_tasks.close();
    relay.client_tasks.wait().await;
    for path in console.sockets() {
        let _ = std::fs::remove_file(path);
    }
    info!("console closed");
}

impl Relay {
    /// A (re)connecting guest replaces the old connection once the old
    /// one's output has been taken.
    fn adopt_guest(&mut self, guest: UnixStream) {
        if self.guest.is_some() {
            self.drain_guest();
            info!("guest reconnected");
        } else {
            info!("guest connected");
        }
        self.guest = Some(guest);
        self.stats.guest_connected.store(true, Relaxed);
    }

    fn guest_gone(&mut self) {
        if self.guest.take().is_some() {
            info!("guest disconnected");
        }
        self.stats.guest_connected.store(false, Relaxed);
    }

    /// One read from the guest, passed on at once. True if a client's
    /// writer task was woken to send some of it.
    fn read_guest(&mut self) -> bool {
        BUFFER.with_borrow_mut(|buf| {
            let Some(guest) = &self.guest else {
                return false;
            };
            match guest.try_read(buf) {
                Ok(0) => self.guest_gone(),
                Ok(n) => return self.output(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    debug!(error = %e, "guest read failed");
                    self.guest_gone();
                }
            }
            false
        })
    }

    /// Reads until the guest has nothing more to give right now.
    fn drain_guest(&mut self) {
        loop {
            let before = self.stats.bytes_from_guest.load(Relaxed);
            self.read_guest();
            if self.guest.is_none() || self.stats.bytes_from_guest.load(Relaxed) == before {
                return;
            }
        }
    }

    /// Guest output: to the log first, then to every client, straight to
    /// its socket if it keeps up, else into its queue. True if a client's
    /// writer task was woken.
    fn output(&mut self, data: &[u8]) -> bool {
        self.stats
            .bytes_from_guest
            .fetch_add(data.len() as u64, Relaxed);
        match &self.settings.log {
            // A refused write is counted and logged by the log itself.
            Some(log) => {
                let _ = log.write(data);
            }
            None => self.remember(data),
        }
        let stats = &self.stats;
        let mut out = Output::new(data);
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
    /// replay, then live output.
    fn attach(&mut self, stream: UnixStream, viewer: bool) {
        let counter = if viewer {
            &self.stats.viewers
        } else {
            &self.stats.clients
        };
        let max = self.settings.max_clients;
        if counter.load(Relaxed) >= max {
            let what = if viewer { "viewers" } else { "clients" };
            let msg = format!("\r\n[guestlogd: LimitReached: {max} {what}]\r\n");
            let _ = stream.try_write(msg.as_bytes());
            debug!(what, max, "attach refused");
            return;
        }
        self.clients.retain(|c| !c.stop.is_cancelled());

        let queue = Arc::new(OutputQueue::new(self.settings.queue, self.settings.slow));
        queue.start_with(self.replay());
        let stop = self.stop.child_token();
        counter.fetch_add(1, Relaxed);
        let guard = Arc::new(Attached {
            stats: self.stats.clone(),
            viewer,
        });
        let (read, write) = stream.into_split();
        let socket = Arc::new(write);
        let input = (!viewer).then(|| self.input_tx.clone());
        self.client_tasks.spawn(send_output(
            socket.clone(),
            queue.clone(),
            stop.clone(),
            guard.clone(),
        ));
        self.client_tasks
            .spawn(take_input(read, input, stop.clone(), guard));
        self.clients.push(Client {
            queue,
            socket,
            stop,
        });
        debug!(viewer, "client attached");
    }

    fn replay(&self) -> Vec<u8> {
        let n = self.settings.replay;
        match &self.settings.log {
            Some(log) => log.tail(n).unwrap_or_else(|e| {
                warn!(error = %crate::registry::error_chain(&e), "cannot read the replay");
                Vec::new()
            }),
            None => self.ring.iter().copied().collect(),
        }
    }
}

/// Counts a client while either of its tasks runs.
struct Attached {
    stats: Arc<Stats>,
    viewer: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let counter = if self.viewer {
            &self.stats.viewers
        } else {
            &self.stats.clients
        };
        counter.fetch_sub(1, Relaxed);
    }
}

/// A client's writer: the backlog in its queue, at the client's pace.
async fn send_output(
    w: Arc<OwnedWriteHalf>,
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
        let sent = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = send(&w, batch.dropped, &batch.chunks) => r,
        };
        if sent.is_err() {
            break;
        }
        queue.sent();
    }
    stop.cancel();
    queue.close();
}

async fn send(w: &OwnedWriteHalf, dropped: u64, chunks: &[Bytes]) -> io::Result<()> {
    if dropped > 0 {
        write_all(w, drop_marker(dropped).as_bytes()).await?;
    }
    for c in chunks {
        write_all(w, c).await?;
    }
    Ok(())
}

/// `write_all` through a shared half: the relay writes through it too, but
/// only while this task has nothing popped.
async fn write_all(w: &OwnedWriteHalf, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A client's reader: input to the relay (or, for a viewer, nowhere).
async fn take_input(
    mut r: OwnedReadHalf,
    input: Option<mpsc::Sender<Bytes>>,
    stop: CancellationToken,
    _attached: Arc<Attached>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = r.read(&mut buf) => r,
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
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
            r = r.as_ref().ready(Interest::WRITABLE) => r.map_or(true, |ready| ready.is_write_closed()),
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

/// Out of FDs, usually: pause briefly rather than spin.
async fn accept_failed(e: io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
