//! `OutputQueue`: one reader's bounded queue of output, filled by a producer
//! that must never wait for it.
//!
//! The producer (a console's relay, a log's writer) pushes shared `Bytes`;
//! the consumer (a client's writer task, a Follow stream) pops everything
//! queued at once. When a push would pass the cap, the queue's policy
//! applies: `Drop` discards the oldest queued bytes and remembers how many,
//! so the consumer is told before the data that follows the gap;
//! `Disconnect` closes the queue.
//!
//! Invariant: at most `cap` bytes are queued, except for the replay a new
//! consumer starts with.

use std::{
    collections::VecDeque,
    io,
    sync::{Mutex, MutexGuard, PoisonError},
};

use bytes::Bytes;
use tokio::sync::Notify;

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
}

/// Output on its way to several queues, copied into shared memory at most
/// once, and only if some queue keeps it.
#[derive(Debug)]
pub struct Output<'a> {
    data: &'a [u8],
    shared: Option<Bytes>,
}

impl<'a> Output<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, shared: None }
    }

    /// The last `n` bytes, shared.
    fn tail(&mut self, n: usize) -> Bytes {
        let all = self
            .shared
            .get_or_insert_with(|| Bytes::copy_from_slice(self.data));
        all.slice(all.len() - n..)
    }
}

/// For queues whose consumer has no socket to write to directly.
pub fn no_direct(_: &[u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// Everything a consumer has to send now.
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
    cap: usize,
    policy: SlowPolicy,
}

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// Dropped since the consumer last popped; all of it precedes `chunks`.
    dropped: u64,
    closed: bool,
    /// The consumer popped a batch and is still sending it.
    sending: bool,
}

impl OutputQueue {
    pub fn new(cap: usize, policy: SlowPolicy) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            cap,
            policy,
        }
    }

    /// Queues a consumer's first bytes (its replay), past the cap if need be.
    pub fn start_with(&self, replay: Vec<u8>) {
        if !replay.is_empty() {
            let mut s = self.lock();
            s.bytes += replay.len();
            s.chunks.push_back(Bytes::from(replay));
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
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        let idle = s.chunks.is_empty() && !s.sending;
        let mut rest = out.data.len();
        if idle && s.dropped == 0 {
            match send(out.data) {
                Ok(n) if n == rest => return Pushed::Sent,
                Ok(n) => rest -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    s.closed = true;
                    drop(s);
                    self.ready.notify_one();
                    return Pushed::Closed;
                }
            }
        }
        if s.bytes + rest > self.cap && self.policy == SlowPolicy::Disconnect {
            s.closed = true;
            drop(s);
            self.ready.notify_one();
            return Pushed::Closed;
        }
        let mut dropped = rest.saturating_sub(self.cap);
        let data = out.tail(rest - dropped);
        while s.bytes + data.len() > self.cap {
            let Some(old) = s.chunks.pop_front() else {
                break;
            };
            s.bytes -= old.len();
            dropped += old.len();
        }
        s.dropped += dropped as u64;
        s.bytes += data.len();
        s.chunks.push_back(data);
        drop(s);
        self.ready.notify_one();
        Pushed::Queued {
            dropped,
            woke: idle,
        }
    }

    /// Waits for output; `None` once the queue is closed. What is still
    /// queued then is not delivered: a closed consumer is gone, or was
    /// disconnected for falling behind.
    pub async fn pop(&self) -> Option<Batch> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if !s.chunks.is_empty() || s.dropped > 0 {
                    s.bytes = 0;
                    s.sending = true;
                    return Some(Batch {
                        dropped: std::mem::take(&mut s.dropped),
                        chunks: s.chunks.drain(..).collect(),
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
        for c in chunks.into_iter().rev() {
            s.bytes += c.len();
            s.chunks.push_front(c);
        }
        s.dropped += dropped;
        s.sending = false;
    }

    /// Everything queued, at once, for handing over.
    pub fn take(&self) -> Batch {
        let mut s = self.lock();
        s.bytes = 0;
        Batch {
            dropped: std::mem::take(&mut s.dropped),
            chunks: s.chunks.drain(..).collect(),
        }
    }

    /// The consumer has sent what it popped.
    pub fn sent(&self) {
        self.lock().sending = false;
    }

    /// Ends the queue: the producer stops pushing, the consumer stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Nothing queued and nothing being sent.
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.chunks.is_empty() && !s.sending && s.dropped == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The line a client sees where output was dropped for it.
pub fn drop_marker(dropped: u64) -> String {
    format!("\r\n[guestlogd: {dropped} bytes dropped]\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn push(q: &OutputQueue, data: &str) -> Pushed {
        q.push(&mut Output::new(data.as_bytes()), no_direct)
    }

    #[tokio::test]
    async fn drop_policy_keeps_the_newest_and_counts_the_rest() {
        let q = OutputQueue::new(10, SlowPolicy::Drop);
        let queued = |dropped, woke| Pushed::Queued { dropped, woke };
        assert_eq!(push(&q, "aaaa"), queued(0, true));
        assert_eq!(push(&q, "bbbb"), queued(0, false));
        assert_eq!(push(&q, "cccc"), queued(4, false));
        assert_eq!(push(&q, "0123456789xy"), queued(10, false));
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.dropped, 14);
        assert_eq!(batch.chunks, [b("23456789xy")]);
        q.sent();
        push(&q, "z");
        let batch = q.pop().await.unwrap();
        assert_eq!((batch.dropped, batch.chunks), (0, vec![b("z")]));
    }

    #[tokio::test]
    async fn sends_directly_only_when_idle() {
        let q = OutputQueue::new(100, SlowPolicy::Drop);
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
        assert_eq!(batch.chunks, [b("cd"), b("ef")]);
        // Still sending the batch: no direct send either.
        q.push(&mut Output::new(b"gh"), |_| panic!("sent during a batch"));
        q.sent();
        assert_eq!(q.pop().await.unwrap().chunks, [b("gh")]);
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
    fn output_is_copied_once_for_all_queues() {
        let (a, b) = (
            OutputQueue::new(8, SlowPolicy::Drop),
            OutputQueue::new(8, SlowPolicy::Drop),
        );
        let mut out = Output::new(b"0123456789");
        a.push(&mut out, no_direct);
        b.push(&mut out, |_| Ok(4));
        let (qa, qb) = (a.lock().chunks[0].clone(), b.lock().chunks[0].clone());
        assert_eq!((&qa[..], &qb[..]), (&b"23456789"[..], &b"456789"[..]));
        // Both are views of one buffer.
        assert_eq!(qa.as_ptr().wrapping_add(2), qb.as_ptr());
    }

    #[tokio::test]
    async fn disconnect_policy_closes_instead() {
        let q = OutputQueue::new(4, SlowPolicy::Disconnect);
        push(&q, "abc");
        assert_eq!(push(&q, "de"), Pushed::Closed);
        assert_eq!(q.pop().await, None);
        assert_eq!(push(&q, "f"), Pushed::Closed);
    }

    #[tokio::test]
    async fn replay_may_exceed_the_cap_and_wakes_the_consumer() {
        let q = std::sync::Arc::new(OutputQueue::new(4, SlowPolicy::Drop));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.start_with(b"0123456789".to_vec());
        let batch = consumer.await.unwrap().unwrap();
        assert_eq!(batch.chunks, [b("0123456789")]);
    }

    #[test]
    fn marker_is_a_line_of_its_own() {
        assert_eq!(drop_marker(5), "\r\n[guestlogd: 5 bytes dropped]\r\n");
    }
}
