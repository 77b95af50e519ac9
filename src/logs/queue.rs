//! `OutputQueue`: one reader's bounded queue of output, filled by a producer
//! that must never wait for it.
//!
//! The producer (a console's relay, a log's writer) pushes output; the
//! consumer (a client's writer task, a Follow stream) pops it in batches.
//! When a push would pass the cap, the queue's policy applies: `Drop`
//! discards the oldest bytes not yet popped and remembers how many, so the
//! consumer is told before the data that follows the gap; `Disconnect`
//! closes the queue. A producer may instead ask to be told (`push_or_full`)
//! and wait for the consumer to free room (`room`), for as long as it
//! chooses (a console's relay: a moment, see `consoles::clients`).
//!
//! The cap bounds memory, not payload. A guest's serial port gives the relay
//! a few bytes per read, and a chunk per read would cost far more in
//! bookkeeping than in data, so small pushes are copied into a tail buffer
//! that the queue owns; only large ones share the producer's one copy. Every
//! allocation is charged at what it holds alive: a tail at its capacity, a
//! shared slice at the whole buffer it keeps, each chunk plus `OVERHEAD`.
//!
//! Invariants:
//! - `held` (queued, tail and the batch in flight, by those charges) is at
//!   most `cap`, except for the replay a new consumer starts with.
//! - No chunk costs more than half the cap (larger pieces are copied in
//!   parts), and a batch takes at most half the cap, so the newest output
//!   always finds room beside a batch in flight.
//! - `close` frees everything queued at once; only the consumer's batch in
//!   flight outlives it, as long as the consumer keeps it.
//! - Bytes come out in the order they went in; `dropped` always counts bytes
//!   that lie before everything still queued.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Notify;

/// What one queued chunk costs beyond its bytes: its slot in the deque (and
/// the deque's spare slot, as it grows by doubling), `Bytes`' shared header
/// and the allocator's own header.
pub const OVERHEAD: usize = 128;
/// Pushes shorter than this are copied into the queue's tail: a copy costs
/// less than a chunk of their own.
const COALESCE: usize = 1024;
/// The first tail after a batch; each next one doubles, up to `TAIL_MAX`,
/// so a consumer that keeps up holds small tails and a stalled one few.
const TAIL_MIN: usize = 256;
const TAIL_MAX: usize = 16 * 1024;
/// How long after a queue frees its memory the allocator is asked to give
/// free pages back (`give_back`).
const TRIM_DELAY: Duration = Duration::from_millis(500);

/// Queue memory freed since the allocator last gave pages back; non-zero
/// while a trim is due.
static FREED: AtomicUsize = AtomicUsize::new(0);

/// What to do with a consumer that falls `cap` bytes behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    #[default]
    Drop,
    Disconnect,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Written straight to the consumer.
    Sent,
    /// Queued; `dropped` older bytes were discarded to make room. `woke`:
    /// the consumer was waiting for output and now has some.
    Queued { dropped: usize, woke: bool },
    /// The consumer is gone, or was disconnected by this push.
    Closed,
    /// Nothing done: the output does not fit now, and the producer said
    /// it would rather wait for room (`room`) than drop or disconnect.
    Full,
}

/// Output on its way to several queues, copied into shared memory at most
/// once, and only if some queue keeps a large piece of it.
#[derive(Debug)]
pub struct Output<'a> {
    data: &'a [u8],
    shared: Option<Bytes>,
}

impl<'a> Output<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, shared: None }
    }

    /// Output that is already shared: queues keep pieces of it, uncopied.
    pub fn shared(data: &'a Bytes) -> Self {
        Self {
            data,
            shared: Some(data.clone()),
        }
    }

    /// The last `n` bytes, shared.
    fn shared_tail(&mut self, n: usize) -> Bytes {
        let all = self
            .shared
            .get_or_insert_with(|| Bytes::copy_from_slice(self.data));
        all.slice(all.len() - n..)
    }

    /// The last `n` bytes, borrowed.
    fn tail(&self, n: usize) -> &'a [u8] {
        &self.data[self.data.len() - n..]
    }
}

/// For queues whose consumer has no socket to write to directly.
pub fn no_direct(_: &[u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// What a consumer has to send now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Bytes dropped before `chunks` because the consumer fell behind.
    pub dropped: u64,
    pub chunks: Vec<Bytes>,
}

#[derive(Debug)]
pub struct OutputQueue {
    state: Mutex<State>,
    ready: Notify,
    /// Told when the consumer frees room, for a producer that waits.
    room: Notify,
    cap: usize,
    policy: SlowPolicy,
}

#[derive(Debug)]
struct Chunk {
    data: Bytes,
    /// What `data` keeps allocated, with `OVERHEAD`.
    cost: usize,
}

#[derive(Debug)]
struct State {
    chunks: VecDeque<Chunk>,
    /// Small pushes, after `chunks`; its capacity is allocated up front.
    tail: Vec<u8>,
    /// What `tail` was charged: its capacity and `OVERHEAD`, or 0.
    tail_cost: usize,
    /// The capacity of the next tail.
    next_tail: usize,
    /// All that is charged: `chunks`, `tail` and `in_flight`.
    held: usize,
    /// The charge of the batch the consumer popped and has not sent.
    in_flight: usize,
    /// Dropped since the consumer last popped; all of it precedes `chunks`.
    dropped: u64,
    closed: bool,
    /// The producer is done: the consumer gets what is queued, then the
    /// end (`finish`).
    finished: bool,
    /// The consumer popped a batch and is still sending it.
    sending: bool,
}

/// How a piece of output is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Copied into the tail, which has room.
    Append,
    /// Copied into a new tail of this capacity.
    NewTail(usize),
    /// A slice of the producer's shared copy.
    Share,
    /// Copied into a chunk of its own.
    Copy,
}

impl State {
    fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            tail: Vec::new(),
            tail_cost: 0,
            next_tail: TAIL_MIN,
            held: 0,
            in_flight: 0,
            dropped: 0,
            closed: false,
            finished: false,
            sending: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    /// Ends the tail, so that what comes next goes after it, or so that it
    /// can be dropped as a whole.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let data = Bytes::from(std::mem::take(&mut self.tail));
            let cost = std::mem::take(&mut self.tail_cost);
            self.chunks.push_back(Chunk { data, cost });
        }
    }

    /// How `n` bytes of `out` would be stored, and what that adds to `held`.
    fn plan(&self, out: &Output<'_>, n: usize, cap: usize) -> (Plan, usize) {
        if n < COALESCE {
            if self.tail.capacity() - self.tail.len() >= n && !self.tail.is_empty() {
                return (Plan::Append, 0);
            }
            let capacity = self.next_tail.min(tail_max(cap)).max(n);
            return (Plan::NewTail(capacity), capacity + OVERHEAD);
        }
        // A slice keeps its whole buffer alive: share only a slice that is
        // most of it, of a buffer that fits in one chunk.
        let whole = out.data.len();
        if 2 * n >= whole && whole + OVERHEAD <= cap / 2 {
            (Plan::Share, whole + OVERHEAD)
        } else {
            (Plan::Copy, copy_cost(n, cap))
        }
    }

    /// Drops the oldest chunks until `cost` more fits under `cap`, or
    /// nothing queued is left to drop. Returns the bytes dropped.
    fn make_room(&mut self, cost: usize, cap: usize) -> usize {
        let mut dropped = 0;
        while self.held + cost > cap {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.held -= old.cost;
            dropped += old.data.len();
        }
        dropped
    }

    /// Stores the last `n` bytes of `out` as `plan` says.
    fn store(&mut self, out: &mut Output<'_>, n: usize, plan: Plan, cost: usize, cap: usize) {
        self.held += cost;
        if plan != Plan::Append {
            self.seal_tail();
        }
        match plan {
            Plan::Append => self.tail.extend_from_slice(out.tail(n)),
            Plan::NewTail(capacity) => {
                let mut tail = Vec::with_capacity(capacity);
                tail.extend_from_slice(out.tail(n));
                self.tail = tail;
                self.tail_cost = cost;
                self.next_tail = (self.next_tail * 2).min(TAIL_MAX);
            }
            Plan::Share => {
                let data = out.shared_tail(n);
                self.chunks.push_back(Chunk { data, cost });
            }
            Plan::Copy => self.push_copies(out.tail(n), cap),
        }
    }

    /// Queues a copy of `data`, in chunks of at most `part(cap)` bytes.
    fn push_copies(&mut self, data: &[u8], cap: usize) {
        for piece in data.chunks(part(cap)) {
            self.chunks.push_back(Chunk {
                data: Bytes::copy_from_slice(piece),
                cost: piece.len() + OVERHEAD,
            });
        }
    }

    /// Frees everything queued; the batch in flight stays charged until
    /// the consumer is done with it.
    fn clear(&mut self) {
        let freed = self.held - self.in_flight;
        self.chunks = VecDeque::new();
        self.tail = Vec::new();
        self.tail_cost = 0;
        self.held = self.in_flight;
        give_back(freed);
    }
}

/// Counts `freed` bytes of output memory (a queue cleared, a batch sent, a
/// relay's read buffer given back when its guest went idle) and has glibc
/// return its free pages to the kernel soon after. Without this, memory
/// that bursts of output took stays resident: it was allocated among
/// longer-lived blocks, often by other threads' arenas, so no heap can
/// shrink from its top. One trim, `TRIM_DELAY` after the first release,
/// covers every release until it runs, so a stream of releases costs at
/// most one trim per `TRIM_DELAY`.
pub fn give_back(freed: usize) {
    if freed == 0 || FREED.fetch_add(freed, Relaxed) > 0 {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async {
                tokio::time::sleep(TRIM_DELAY).await;
                // Off the workers: a trim walks every heap under its lock.
                let _ = tokio::task::spawn_blocking(trim).await;
            });
        }
        Err(_) => trim(),
    }
}

#[allow(unsafe_code)]
fn trim() {
    FREED.store(0, Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the
    // kernel; it takes the allocator's own locks and touches no live block.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The most bytes in one chunk: with its overhead, half the cap.
fn part(cap: usize) -> usize {
    (cap / 2).saturating_sub(OVERHEAD).max(1)
}

/// What `n` bytes cost copied in parts.
fn copy_cost(n: usize, cap: usize) -> usize {
    n + n.div_ceil(part(cap)) * OVERHEAD
}

/// The most bytes that copied in parts cost at most `room`.
fn copy_fits(room: usize, cap: usize) -> usize {
    let whole = part(cap) + OVERHEAD;
    room / whole * part(cap) + (room % whole).saturating_sub(OVERHEAD)
}

/// The largest tail for a queue of `cap`: small against the cap, so that a
/// tail dropped whole loses little.
fn tail_max(cap: usize) -> usize {
    (cap / 8).clamp(TAIL_MIN, TAIL_MAX)
}

impl OutputQueue {
    pub fn new(cap: usize, policy: SlowPolicy) -> Self {
        Self {
            state: Mutex::new(State::new()),
            ready: Notify::new(),
            room: Notify::new(),
            cap,
            policy,
        }
    }

    /// Queues a consumer's first bytes (its replay), past the cap if need be.
    /// Its buffer is kept, not copied: slices of it, each charged as a
    /// copy of its own would be, which adds up to what it holds.
    pub fn start_with(&self, replay: Vec<u8>) {
        if !replay.is_empty() {
            let mut s = self.lock();
            s.seal_tail();
            s.held += copy_cost(replay.len(), self.cap);
            let all = Bytes::from(replay);
            let part = part(self.cap);
            for at in (0..all.len()).step_by(part) {
                let data = all.slice(at..(at + part).min(all.len()));
                let cost = data.len() + OVERHEAD;
                s.chunks.push_back(Chunk { data, cost });
            }
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `data`, or hands it to `send` (a non-blocking write to the
    /// consumer's socket) when nothing is queued or being sent: a consumer
    /// that keeps up then costs no copy and no task switch. What `send`
    /// does not take is queued, without waiting.
    pub fn push(
        &self,
        out: &mut Output<'_>,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> Pushed {
        self.push_or_full(out, send, false)
    }

    /// `push`, except that with `wait` output that does not fit now is
    /// neither dropped nor a reason to disconnect: `Pushed::Full`, and
    /// nothing changes. The producer may then wait for `room` and push
    /// again.
    pub fn push_or_full(
        &self,
        out: &mut Output<'_>,
        send: impl FnOnce(&[u8]) -> io::Result<usize>,
        wait: bool,
    ) -> Pushed {
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        let idle = s.is_empty() && !s.sending;
        let mut rest = out.data.len();
        if idle && s.dropped == 0 {
            match send(out.data) {
                Ok(n) if n >= rest => return Pushed::Sent,
                Ok(n) => rest -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return self.close_locked(s),
            }
        }
        if rest == 0 {
            return Pushed::Queued {
                dropped: 0,
                woke: false,
            };
        }
        let cap = self.cap;
        let disconnect = self.policy == SlowPolicy::Disconnect;
        // Past this, not even an empty queue could hold the piece.
        let most = copy_fits(cap, cap);
        let mut dropped = rest.saturating_sub(most);
        if dropped > 0 && disconnect {
            return self.close_locked(s);
        }
        rest -= dropped;
        let (mut plan, mut cost) = s.plan(out, rest, cap);
        if s.held + cost > cap {
            if wait && dropped == 0 && !idle {
                return Pushed::Full;
            }
            if disconnect {
                return self.close_locked(s);
            }
            if plan != Plan::Append {
                s.seal_tail();
            }
            dropped += s.make_room(cost, cap);
            if s.held + cost > cap {
                // Nothing queued is left: the batch in flight holds the
                // room, and only the newest bytes that fit beside it stay.
                let fits = copy_fits(cap.saturating_sub(s.held), cap).min(rest);
                dropped += rest - fits;
                rest = fits;
                (plan, cost) = (Plan::Copy, copy_cost(rest, cap));
            }
        }
        if rest > 0 {
            s.store(out, rest, plan, cost, cap);
        }
        s.dropped += dropped as u64;
        drop(s);
        self.ready.notify_one();
        Pushed::Queued {
            dropped,
            woke: idle,
        }
    }

    fn close_locked(&self, mut s: MutexGuard<'_, State>) -> Pushed {
        s.closed = true;
        s.clear();
        drop(s);
        self.ready.notify_one();
        self.room.notify_one();
        Pushed::Closed
    }

    /// Waits until `n` bytes pushed now would fit without dropping, or the
    /// queue is closed. One producer waits at a time.
    pub async fn room(&self, n: usize) {
        loop {
            {
                let s = self.lock();
                if s.closed || s.held + copy_cost(n, self.cap) <= self.cap {
                    return;
                }
            }
            // `notify_one` keeps a permit when nobody waits: a batch sent
            // between the check and this await is not missed.
            self.room.notified().await;
        }
    }

    /// Waits for output; `None` once the queue is closed. What is still
    /// queued then is not delivered: a closed consumer is gone, or was
    /// disconnected for falling behind.
    ///
    /// The batch stays charged to the queue until `sent` (or `unsend`): the
    /// consumer holds it, so it is memory this consumer costs.
    pub async fn pop(&self) -> Option<Batch> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if s.finished && s.is_empty() && s.dropped == 0 {
                    return None;
                }
                if !s.is_empty() || s.dropped > 0 {
                    s.seal_tail();
                    let budget = self.cap / 2;
                    let mut cost = 0;
                    let mut chunks = Vec::new();
                    while let Some(c) = s.chunks.front() {
                        if !chunks.is_empty() && cost + c.cost > budget {
                            break;
                        }
                        cost += c.cost;
                        if let Some(c) = s.chunks.pop_front() {
                            chunks.push(c.data);
                        }
                    }
                    // Unsent chunks from an earlier batch may still be
                    // charged: the consumer sends in order, so they are
                    // gone once it pops again.
                    s.held -= s.in_flight;
                    s.in_flight = cost;
                    s.sending = true;
                    s.next_tail = TAIL_MIN;
                    self.room.notify_one();
                    return Some(Batch {
                        dropped: std::mem::take(&mut s.dropped),
                        chunks,
                    });
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push
            // between the check above and this await is not missed.
            self.ready.notified().await;
        }
    }

    /// Puts back what the consumer popped but could not send, ahead of
    /// anything queued since.
    pub fn unsend(&self, chunks: Vec<Bytes>, dropped: u64) {
        let mut s = self.lock();
        s.held -= std::mem::take(&mut s.in_flight);
        s.sending = false;
        if s.closed {
            return;
        }
        for data in chunks.into_iter().rev() {
            let cost = data.len() + OVERHEAD;
            s.held += cost;
            s.chunks.push_front(Chunk { data, cost });
        }
        s.dropped += dropped;
    }

    /// Everything queued, at once, for handing over.
    pub fn take(&self) -> Batch {
        let mut s = self.lock();
        s.seal_tail();
        let chunks = std::mem::take(&mut s.chunks);
        s.held = s.in_flight;
        Batch {
            dropped: std::mem::take(&mut s.dropped),
            chunks: chunks.into_iter().map(|c| c.data).collect(),
        }
    }

    /// The consumer has sent what it popped (or holds it no more).
    pub fn sent(&self) {
        let mut s = self.lock();
        let freed = std::mem::take(&mut s.in_flight);
        s.held -= freed;
        s.sending = false;
        drop(s);
        self.room.notify_one();
        give_back(freed);
    }

    /// Ends the queue: the producer stops pushing, the consumer stops, and
    /// what was queued is freed now.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.clear();
        drop(s);
        self.ready.notify_one();
        self.room.notify_one();
    }

    /// Ends the queue once the consumer has what it holds: `pop` gives
    /// the rest, then `None`.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.ready.notify_one();
    }

    /// Nothing queued and nothing being sent.
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.is_empty() && !s.sending && s.dropped == 0
    }

    /// The memory charged to this queue, in bytes: what it holds and the
    /// consumer's batch in flight.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for OutputQueue {
    /// A queue whose consumer left without closing it (a console client
    /// the relay forgets) frees what it held like `close`.
    fn drop(&mut self) {
        self.lock().clear();
    }
}

/// The line a client sees where output was dropped for it.
pub fn drop_marker(dropped: u64) -> String {
    format!("\r\n[guestlogd: {dropped} bytes dropped]\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 64 * 1024;

    fn push(q: &OutputQueue, data: &[u8]) -> Pushed {
        q.push(&mut Output::new(data), no_direct)
    }

    fn pushed_dropped(p: Pushed) -> usize {
        match p {
            Pushed::Queued { dropped, .. } => dropped,
            other => panic!("{other:?}"),
        }
    }

    fn numbered(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Pops and sends until nothing is left: the first batch's `dropped`
    /// and every byte.
    async fn drain(q: &OutputQueue) -> (u64, Vec<u8>) {
        let (mut dropped, mut got) = (None, Vec::new());
        while !q.is_idle() {
            let batch = q.pop().await.unwrap();
            dropped.get_or_insert(batch.dropped);
            got.extend(batch.chunks.concat());
            q.sent();
        }
        (dropped.unwrap_or(0), got)
    }

    /// What the queue's buffers really take: every chunk's bytes, the
    /// tail's capacity, and `OVERHEAD` for each.
    fn allocated(q: &OutputQueue) -> usize {
        let s = q.lock();
        let bytes: usize = s.chunks.iter().map(|c| c.data.len()).sum();
        bytes + s.tail.capacity() + (s.chunks.len() + 1) * OVERHEAD
    }

    #[tokio::test]
    async fn drop_policy_keeps_the_newest_and_counts_the_rest() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let data = numbered(4 * CAP);
        let mut dropped = 0;
        for (i, piece) in data.chunks(3000).enumerate() {
            let pushed = push(&q, piece);
            assert!(matches!(pushed, Pushed::Queued { woke, .. } if woke == (i == 0)));
            dropped += pushed_dropped(pushed);
            assert!(q.held() <= CAP, "{} held", q.held());
        }
        let (first, got) = drain(&q).await;
        assert_eq!(first, dropped as u64);
        assert_eq!(dropped + got.len(), data.len());
        assert!(data.ends_with(&got));
        assert!(got.len() > CAP / 2, "only {} bytes kept", got.len());
        push(&q, b"z");
        let batch = q.pop().await.unwrap();
        assert_eq!((batch.dropped, batch.chunks), (0, vec![Bytes::from("z")]));
    }

    #[tokio::test]
    async fn one_byte_pushes_stay_within_the_cap_in_memory() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let data = numbered(1 << 20);
        let mut dropped = 0;
        for piece in data.chunks(1) {
            dropped += pushed_dropped(push(&q, piece));
            assert!(q.held() <= CAP, "{} held", q.held());
        }
        // The charge covers what is allocated, and the bytes kept are most
        // of it (a chunk per byte would keep 1 byte in 100).
        assert!(
            allocated(&q) <= q.held(),
            "{} > {}",
            allocated(&q),
            q.held()
        );
        let chunks = q.lock().chunks.len();
        assert!(chunks <= 2 * CAP / TAIL_MAX, "{chunks} chunks");
        let (first, got) = drain(&q).await;
        assert!(got.len() >= CAP / 2, "only {} bytes kept", got.len());
        assert_eq!((first, dropped + got.len()), (dropped as u64, data.len()));
        assert!(data.ends_with(&got));
    }

    #[tokio::test]
    async fn the_batch_in_flight_counts_against_the_cap() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let data = numbered(3 * CAP);
        let mut dropped = 0;
        for piece in data[..CAP].chunks(4096) {
            dropped += pushed_dropped(push(&q, piece));
        }
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.dropped, dropped as u64);
        let in_flight: usize = batch.chunks.iter().map(Bytes::len).sum();
        // At most half the cap, so output can queue while it is sent.
        assert!(in_flight <= CAP / 2, "a batch of {in_flight} bytes");
        assert!(q.held() <= CAP);
        // While the consumer holds it, the queue has only the rest.
        for piece in data[CAP..].chunks(4096) {
            dropped += pushed_dropped(push(&q, piece));
            assert!(q.held() <= CAP, "{} held", q.held());
        }
        let queued = allocated(&q) - OVERHEAD;
        assert!(in_flight + queued <= CAP, "{in_flight} + {queued}");
        // One piece larger than the room left: its newest bytes stay.
        let big = numbered(CAP - OVERHEAD);
        dropped += pushed_dropped(push(&q, &big));
        assert!(q.held() <= CAP, "{} held", q.held());
        q.sent();
        assert!(q.held() <= CAP - in_flight);
        let (first, got) = drain(&q).await;
        assert_eq!(first, (dropped - batch.dropped as usize) as u64);
        assert!(!got.is_empty() && big.ends_with(&got));
        assert_eq!(in_flight + dropped + got.len(), data.len() + big.len());
    }

    #[tokio::test]
    async fn the_newest_output_always_fits_beside_a_batch() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        // The largest piece an empty queue holds, then a consumer that
        // takes a batch of it and stalls.
        let first = numbered(copy_fits(CAP, CAP));
        assert_eq!(pushed_dropped(push(&q, &first)), 0);
        assert!(q.held() <= CAP);
        let batch = q.pop().await.unwrap();
        let in_flight: usize = batch.chunks.iter().map(Bytes::len).sum();
        assert!(
            in_flight + OVERHEAD <= CAP / 2,
            "a batch of {in_flight} bytes"
        );
        let newest = numbered(CAP);
        push(&q, &newest);
        assert!(q.held() <= CAP, "{} held", q.held());
        q.sent();
        let (_, got) = drain(&q).await;
        assert!(newest.ends_with(&got));
        assert!(got.len() >= CAP / 2 - 2 * OVERHEAD, "{} kept", got.len());
    }

    #[tokio::test]
    async fn a_finished_queue_gives_what_it_holds_then_ends() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        push(&q, b"last words\n");
        q.finish();
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.chunks.concat(), b"last words\n");
        q.sent();
        assert_eq!(q.pop().await, None);
        // A consumer already waiting is woken for the end.
        let q = std::sync::Arc::new(OutputQueue::new(CAP, SlowPolicy::Drop));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.finish();
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn close_frees_what_was_queued() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let mut out = Output::new(&[7; 8192]);
        q.push(&mut out, no_direct);
        push(&q, b"small");
        assert!(q.held() > 8192);
        let shared = out.shared.take().unwrap();
        assert!(
            !shared.is_unique(),
            "the queue holds no slice of the output"
        );
        q.close();
        assert_eq!(q.held(), 0);
        assert!(shared.is_unique(), "close left the output allocated");
        assert_eq!(q.pop().await, None);
        assert_eq!(push(&q, b"more"), Pushed::Closed);

        // The consumer's batch is its own; it is charged until it is sent.
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        push(&q, &[1; 4096]);
        let batch = q.pop().await.unwrap();
        push(&q, &[2; 4096]);
        q.close();
        assert_eq!(q.held(), 4096 + OVERHEAD);
        q.sent();
        assert_eq!(q.held(), 0);
        drop(batch);
    }

    #[tokio::test]
    async fn small_output_is_gathered_into_one_buffer() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        for _ in 0..100 {
            push(&q, b"ab");
        }
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.chunks, [Bytes::from("ab".repeat(100))]);
        // The tail grows back from its smallest after a batch.
        q.sent();
        push(&q, b"c");
        assert_eq!(q.held(), TAIL_MIN + OVERHEAD);
    }

    #[tokio::test]
    async fn sends_directly_only_when_idle() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let mut sent = Vec::new();
        // Idle: the send takes two bytes, the rest is queued.
        let pushed = q.push(&mut Output::new(b"abcd"), |d| {
            sent.extend_from_slice(&d[..2]);
            Ok(2)
        });
        assert_eq!(
            pushed,
            Pushed::Queued {
                dropped: 0,
                woke: true
            }
        );
        assert_eq!(sent, b"ab");
        // Something is queued: no direct send, or bytes would overtake it.
        q.push(&mut Output::new(b"ef"), |_| {
            panic!("sent past queued bytes")
        });
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.chunks.concat(), b"cdef");
        // Still sending the batch: no direct send either.
        q.push(&mut Output::new(b"gh"), |_| panic!("sent during a batch"));
        q.sent();
        assert_eq!(q.pop().await.unwrap().chunks.concat(), b"gh");
        q.sent();
        assert_eq!(
            q.push(&mut Output::new(b"ij"), |d| Ok(d.len())),
            Pushed::Sent
        );
        // A failed send means the consumer is gone.
        let gone = q.push(&mut Output::new(b"kl"), |_| {
            Err(io::ErrorKind::BrokenPipe.into())
        });
        assert_eq!(gone, Pushed::Closed);
    }

    #[test]
    fn large_output_is_copied_once_for_all_queues() {
        let (a, b) = (
            OutputQueue::new(CAP, SlowPolicy::Drop),
            OutputQueue::new(CAP, SlowPolicy::Drop),
        );
        let data = numbered(8192);
        let mut out = Output::new(&data);
        a.push(&mut out, no_direct);
        b.push(&mut out, |_| Ok(4));
        let (qa, qb) = (
            a.lock().chunks[0].data.clone(),
            b.lock().chunks[0].data.clone(),
        );
        assert_eq!((&qa[..], &qb[..]), (&data[..], &data[4..]));
        // Both are views of one buffer.
        assert_eq!(qa.as_ptr().wrapping_add(4), qb.as_ptr());
        // The slice is charged for the whole buffer it keeps.
        assert_eq!(b.held(), data.len() + OVERHEAD);
    }

    #[test]
    fn a_small_slice_of_a_large_read_is_copied() {
        let q = OutputQueue::new(CAP, SlowPolicy::Drop);
        let data = numbered(60_000);
        let mut out = Output::new(&data);
        q.push(&mut out, |_| Ok(50_000));
        assert!(out.shared.is_none(), "10 KB kept 60 KB alive");
        assert_eq!(q.held(), 10_000 + OVERHEAD);
    }

    #[tokio::test]
    async fn disconnect_policy_closes_instead() {
        let q = OutputQueue::new(4096, SlowPolicy::Disconnect);
        push(&q, &[0; 3000]);
        assert_eq!(push(&q, &[1; 1000]), Pushed::Closed);
        assert_eq!(q.held(), 0);
        assert_eq!(q.pop().await, None);
        assert_eq!(push(&q, b"f"), Pushed::Closed);
    }

    #[tokio::test]
    async fn replay_may_exceed_the_cap_and_wakes_the_consumer() {
        let q = std::sync::Arc::new(OutputQueue::new(4096, SlowPolicy::Drop));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        let replay = numbered(10_000);
        q.start_with(replay.clone());
        let batch = consumer.await.unwrap().unwrap();
        q.sent();
        let mut got = batch.chunks.concat();
        got.extend(drain(&q).await.1);
        assert_eq!(got, replay);
    }

    #[test]
    fn marker_is_a_line_of_its_own() {
        assert_eq!(drop_marker(5), "\r\n[guestlogd: 5 bytes dropped]\r\n");
    }
}
