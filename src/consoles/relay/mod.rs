//! A console's relay: one task owns the guest connection, the log and the
//! client table (`clients`).
//!
//! The relay reads the guest into one buffer, then writes it to the log
//! and passes it to every client at once, from that buffer (the log's job
//! runs on a blocking thread meanwhile): it reads again only once the log
//! has it, so a slow disk slows the guest, through the socket, and loses
//! nothing. A client's full queue is waited for at most `CLIENT_WAIT` per
//! read (`clients`); past that the client loses output, never the guest
//! or the log. Input from clients is written to the guest without
//! blocking. A guest with no client and no log is still read, so it
//! never stalls. The read buffer exists while the guest sends, and is
//! given back when it is idle.
//!
//! Beside that path: the boot log (`boot`) gets the first bytes after each
//! guest connection.

mod read;

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    boot::BootLog,
    clients::{Clients, Start},
    console::{Adopted, Console, Handover, Listeners, Settings, Stats},
    input::Input,
    writers::Who,
};
use crate::{error_chain, fdstore::Kept, logs::log::Wait};

/// How long clients have to take their last output, the migration's line
/// included, when their console is removed because its domain left.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The first read after the guest was idle: a serial console's output is
/// mostly a few bytes, and a read that fills it doubles the next, up to
/// `CHUNK`, so a flood is read in large pieces within a few reads.
const FIRST_READ: usize = 4096;

struct Relay {
    settings: Settings,
    stats: Arc<Stats>,
    guest: Option<Kept<UnixStream>>,
    /// Client input not yet taken by the guest.
    input: Arc<Input>,
    /// The guest's output is read into this while it sends; empty (no
    /// allocation) while it is idle.
    buf: BytesMut,
    /// How much the next read asks for.
    want: usize,
    clients: Clients,
    /// The latest output, for replay, when there is no log to read it from.
    ring: VecDeque<u8>,
    /// The guest connection's name in the descriptor store.
    guest_name: String,
    boot: Option<BootLog>,
    /// The guest is being held to the log's rate.
    throttling: bool,
    console: Arc<Console>,
    /// The guest connection ended, and the relay has not yet looked at
    /// why (`guest_ended`).
    guest_left: bool,
    /// The log and the clients were told that the domain migrated out.
    departed: bool,
}

/// What a relay starts from.
pub struct Parts {
    pub settings: Settings,
    pub listeners: Listeners,
    pub adopted: Adopted,
    pub stats: Arc<Stats>,
    pub stop: CancellationToken,
    pub console: Arc<Console>,
}

/// How an attach went.
enum Attach {
    /// Attached; whether it may write.
    Attached(bool),
    /// Refused at a limit: its name and value.
    Full(&'static str, usize),
}

/// Runs a console until `stop`. Then, when the console is removed or the
/// daemon stops for good, it closes every connection and removes the
/// sockets; when the daemon hands over to a successor, it leaves every
/// connection open in the descriptor store and returns the clients'
/// unsent output.
pub async fn run(parts: Box<Parts>) -> Handover {
    // One boxed argument: what an async fn takes stays in its future for
    // good, beside the locals it is moved into.
    let Parts {
        settings,
        listeners,
        adopted,
        stats,
        stop,
        console,
    } = *parts;
    let input = Arc::new(Input::new());
    let guest_name = format!("console/{}/guest", settings.name);
    let boot = match settings.boot.clone() {
        Some(log) => {
            let mut boot = Box::pin(BootLog::resume(log, settings.boot_bytes)).await;
            if adopted.boot_closed {
                boot.close();
                stats.boot_closed.store(true, Relaxed);
            }
            Some(boot)
        }
        None => None,
    };
    let mut relay = Relay {
        settings: settings.clone(),
        stats: stats.clone(),
        guest: None,
        input: input.clone(),
        buf: BytesMut::new(),
        want: FIRST_READ,
        clients: Clients::new(settings.clone(), stats.clone(), input.clone()),
        ring: VecDeque::new(),
        guest_name,
        boot,
        throttling: false,
        console: console.clone(),
        guest_left: false,
        departed: false,
    };
    if let Some(guest) = adopted.guest {
        relay.guest_pid(&guest);
        relay.guest = Some(guest);
        relay.stats.guest_connected.store(true, Relaxed);
    }
    // The writer a previous guestlogd had joins first, so it stays the
    // writer; the others in the order they first attached (their ids grow),
    // so that the longest attached still takes over when the writer leaves.
    let mut clients = adopted.clients;
    clients.sort_by_key(|c| {
        let name = c.stream.name();
        let id = name.rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
        (Some(name) != adopted.writer.as_deref(), id)
    });
    for c in clients {
        let who = c.who.or_else(|| Who::of(&c.stream)).unwrap_or_default();
        Box::pin(relay.attach(Start::Adopted(c.stream, c.pending), c.viewer, who, false)).await;
    }
    let l = listeners;
    let left = relay.clients.left();
    // A listener whose accept fails (out of FDs) rests a while; the others,
    // and above all the guest's output, go on meanwhile.
    let (mut guest_rest, mut client_rest, mut view_rest) =
        (Rest::default(), Rest::default(), Rest::default());
    // Over the log's rate, the guest is not read until this instant: it
    // waits as on a slow serial line, and nothing it sent is lost.
    let mut throttled: Option<tokio::time::Instant> = None;
    loop {
        let wake = [&guest_rest, &client_rest, &view_rest]
            .iter()
            .filter_map(|r| r.until)
            .min();
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = poll_fn(|cx| l.guest.poll_accept(cx)), if guest_rest.until.is_none() => match r {
                Ok((s, _)) => {
                    guest_rest.clear();
                    Box::pin(relay.connect_guest(s)).await;
                }
                Err(e) => guest_rest.failed(e),
            },
            () = sleep_until(throttled), if throttled.is_some() => {
                throttled = None;
            }
            r = readable(&relay.guest), if throttled.is_none() => match r {
                Ok(()) => {
                    // Boxed, as every long path below: the relay's future
                    // is what an idle console costs, so it holds only the
                    // waits, and a path takes its memory while it runs.
                    let woke = Box::pin(relay.read_guest()).await;
                    throttled = relay.throttle();
                    if woke {
                        // A busy guest keeps this task ready forever, and the
                        // writers it just woke wait in this worker's slot:
                        // let them send before reading more.
                        tokio::task::yield_now().await;
                    }
                }
                Err(_) => relay.guest_gone(),
            },
            r = poll_fn(|cx| l.client.poll_accept(cx)), if client_rest.until.is_none() => match r {
                Ok((s, _)) => {
                    client_rest.clear();
                    let who = Who::of(&s).unwrap_or_default();
                    let start = Start::Replay(s, Vec::new());
                    Box::pin(relay.attach(start, false, who, false)).await;
                }
                Err(e) => client_rest.failed(e),
            },
            r = accept(&l.view), if view_rest.until.is_none() => match r {
                Ok(s) => {
                    view_rest.clear();
                    let who = Who::of(&s).unwrap_or_default();
                    let start = Start::Replay(s, Vec::new());
                    Box::pin(relay.attach(start, true, who, false)).await;
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
            () = input.ready() => {
                // Input typed while no guest is connected is dropped (the
                // client was told): it must never reach a later guest.
                if relay.guest.is_some() {
                    relay.write_guest();
                } else {
                    input.clear();
                }
            }
            r = writable(&relay.guest), if !input.is_empty() => match r {
                Ok(()) => relay.write_guest(),
                Err(_) => relay.guest_gone(),
            },
            () = left.notified() => relay.clients.forget_gone(),
            () = console.attach_ready.notified() => {
                while let Some(r) = console.next_attach() {
                    let start = Start::Replay(r.stream, Vec::new());
                    let attached = Box::pin(relay.attach(start, r.viewer, r.who, r.force)).await;
                    let answer = match attached {
                        Attach::Attached(writer) => Ok(writer),
                        Attach::Full(what, max) => Err((what, max)),
                    };
                    // A caller that gave up meanwhile: its end closes, and
                    // the client with it.
                    let _ = r.reply.send(answer);
                }
            }
        }
        if std::mem::take(&mut relay.guest_left) {
            relay.guest_ended().await;
        }
    }
    console.close_attach();
    let registry = relay.settings.registry.clone();
    if registry.handing_over() && !console.removing() {
        return Box::pin(relay.hand_over()).await;
    }
    // What the guest has sent is taken and logged before the console ends.
    Box::pin(relay.drain_guest()).await;
    if console.migrated() {
        Box::pin(relay.migrated_out()).await;
    }
    if relay.departed {
        Box::pin(relay.clients.close_flushed(FLUSH_LIMIT)).await;
    } else {
        Box::pin(relay.clients.close()).await;
    }
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
        let guest = Kept::add(&store, self.guest_name.clone(), guest, false);
        self.settings.registry.touch();
        // After the old connection's output was taken: that belongs to
        // the boot before. A guest that comes with its domain's live
        // migration is not a boot, however late its first byte.
        let arriving = self
            .console
            .domain()
            .and_then(|d| self.settings.registry.migrations().arriving(&d.uuid));
        self.stats.boot_closed.store(arriving.is_some(), Relaxed);
        if let Some(boot) = &mut self.boot {
            match arriving {
                Some(_) => boot.close(),
                None => boot.guest_connected().await,
            }
        }
        if let (Some(name), Some(log)) = (&arriving, &self.settings.log) {
            log.expect_arrival(name);
        }
        self.departed = false;
        self.guest_pid(&guest);
        self.guest = Some(guest);
        self.stats.guest_connected.store(true, Relaxed);
    }

    /// QEMU's pid, for the journal's OBJECT_PID (0 outside our PID
    /// namespace: left out).
    fn guest_pid(&self, guest: &UnixStream) {
        if let (Some(log), Some(who)) = (&self.settings.log, Who::of(guest)) {
            log.set_journal_pid(who.pid);
        }
    }

    fn guest_gone(&mut self) {
        // Input queued for this guest is for this guest only.
        self.input.clear();
        self.buf = BytesMut::new();
        if self.guest.take().is_some() {
            self.guest_left = true;
            crate::limited!(info, "guest disconnected");
            self.settings.registry.store().remove(&self.guest_name);
            self.settings.registry.touch();
        }
        self.stats.guest_connected.store(false, Relaxed);
    }

    /// The guest connection ended: if its QEMU went because the domain
    /// is migrating away, that is the domain's departure.
    async fn guest_ended(&mut self) {
        let leaving = self
            .console
            .domain()
            .and_then(|d| self.settings.registry.migrations().leaving(&d.uuid));
        if leaving.is_some() {
            self.migrated_out().await;
        }
    }

    /// Tells the log and every client that the domain migrated out, once.
    async fn migrated_out(&mut self) {
        if std::mem::replace(&mut self.departed, true) {
            return;
        }
        let Some(domain) = self.console.domain() else {
            return;
        };
        if let Some(log) = &self.settings.log {
            log.depart(domain.name.clone()).await;
        }
        self.clients
            .notice_all(&format!("domain {} migrated out", domain.name));
        info!(domain = domain.name, "the console's domain migrated out");
    }

    /// Stops without closing anything: output already read is in the log,
    /// output not yet read stays in the kernel, and what clients have not
    /// been sent is sent now where it fits, else returned.
    async fn hand_over(mut self) -> Handover {
        let handover = self.clients.hand_over().await;
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

    /// When the guest may be read again, if the log's rate says to wait;
    /// the wait is counted in `throttledSeconds`.
    fn throttle(&mut self) -> Option<tokio::time::Instant> {
        let wait = self.settings.log.as_ref()?.throttle();
        if wait.is_zero() {
            if std::mem::take(&mut self.throttling) {
                crate::limited!(
                    info,
                    message_id = crate::logging::events::THROTTLE_END,
                    console = %self.settings.name,
                    "the console's guest is read at its pace again"
                );
            }
            return None;
        }
        if !std::mem::replace(&mut self.throttling, true) {
            crate::limited!(
                info,
                message_id = crate::logging::events::THROTTLE_START,
                console = %self.settings.name,
                "the console's guest is over its log's rate and is read slower"
            );
        }
        self.stats
            .throttled_us
            .fetch_add(wait.as_micros() as u64, Relaxed);
        Some(tokio::time::Instant::now() + wait)
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

    /// Guest output: to the log and to every client at once, from the one
    /// buffer (the log's job writes on a blocking thread while the clients
    /// are written here), and the guest is not read again until the log
    /// has it. True if a client's task was woken.
    async fn output(&mut self, data: Bytes) -> bool {
        let log = self.settings.log.clone();
        let to_log = async {
            // A refused write is counted and logged by the log itself. A
            // slow disk slows the guest, and what was read is never only
            // in memory twice.
            if let Some(log) = &log {
                let _ = log.write(Wait::Forever, data.clone()).await;
            }
        };
        let ((), woke) = tokio::join!(to_log, self.clients.push(&data));
        match &log {
            Some(log) if log.limited() => log.charge(data.len()),
            Some(_) => {}
            None => self.remember(&data),
        }
        if let Some(boot) = &mut self.boot {
            boot.output(&data).await;
        }
        // Counted once logged: a figure that says N bytes came from the
        // guest says the log and the boot log have them.
        self.stats
            .bytes_from_guest
            .fetch_add(data.len() as u64, Relaxed);
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
        match self.input.write_to(guest) {
            Ok(n) => {
                self.stats.bytes_to_guest.fetch_add(n as u64, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, "guest write failed");
                self.guest_gone();
            }
        }
    }

    /// Starts a client (or, with `viewer`, a read-only watcher): first the
    /// replay (or, for one carried over, what was queued for it), then live
    /// output. `force` takes the writer's place.
    async fn attach(&mut self, start: Start, viewer: bool, who: Who, force: bool) -> Attach {
        self.clients.forget_gone();
        let carried = matches!(start, Start::Adopted(..));
        let seat = match self.clients.seat(start.stream(), viewer, who, carried) {
            Ok(seat) => seat,
            Err((what, max)) => return Attach::Full(what, max),
        };
        let start = match start {
            Start::Replay(stream, _) => Start::Replay(stream, self.replay().await),
            adopted => adopted,
        };
        Attach::Attached(self.clients.add(start, viewer, who, force, seat))
    }

    async fn replay(&self) -> Vec<u8> {
        let n = self.settings.replay;
        match &self.settings.log {
            Some(_) if n == 0 => Vec::new(),
            Some(log) => log.tail(Wait::Forever, n).await.unwrap_or_else(|e| {
                warn!(error = %error_chain(&e), "cannot read the replay");
                Vec::new()
            }),
            None => self.ring.iter().copied().collect(),
        }
    }
}

/// Waits with the socket's poll method, which keeps the waker in tokio's
/// own registration: the relay's future holds a pointer, not a wait.
async fn readable(guest: &Option<Kept<UnixStream>>) -> io::Result<()> {
    match guest {
        Some(g) => poll_fn(|cx| g.poll_read_ready(cx)).await,
        None => std::future::pending().await,
    }
}

// The waits below are boxed when they run: most consoles never type,
// rest a listener, nor are throttled, and their relay's future holds only
// what they use.

async fn writable(guest: &Option<Kept<UnixStream>>) -> io::Result<()> {
    match guest {
        Some(g) => poll_fn(|cx| g.poll_write_ready(cx)).await,
        None => std::future::pending().await,
    }
}

async fn accept(l: &Option<Kept<UnixListener>>) -> io::Result<UnixStream> {
    match l {
        Some(l) => poll_fn(|cx| l.poll_accept(cx)).await.map(|(s, _)| s),
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
        Some(t) => Box::pin(tokio::time::sleep_until(t)).await,
        None => std::future::pending().await,
    }
}
