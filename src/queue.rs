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
    /// Queued; `dropped` older bytes were discarded to make room.
    Queued { dropped: usize },
    /// The consumer is gone, or was disconnected by this push.
    Closed,
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

    /// Queues `data` without waiting.
    pub fn push(&self, mut data: Bytes) -> Pushed {
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        let mut dropped = 0;
        if s.bytes + data.len() > self.cap {
            if self.policy == SlowPolicy::Disconnect {
                s.closed = true;
                drop(s);
                self.ready.notify_one();
                return Pushed::Closed;
            }
            if data.len() > self.cap {
                dropped += data.len() - self.cap;
                data = data.slice(data.len() - self.cap..);
            }
            while s.bytes + data.len() > self.cap {
                let Some(old) = s.chunks.pop_front() else {
                    break;
                };
                s.bytes -= old.len();
                dropped += old.len();
            }
            s.dropped += dropped as u64;
        }
        s.bytes += data.len();
        s.chunks.push_back(data);
        drop(s);
        self.ready.notify_one();
        Pushed::Queued { dropped }
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

    /// Ends the queue: the producer stops pushing, the consumer stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

    #[tokio::test]
    async fn drop_policy_keeps_the_newest_and_counts_the_rest() {
        let q = OutputQueue::new(10, SlowPolicy::Drop);
        assert_eq!(q.push(b("aaaa")), Pushed::Queued { dropped: 0 });
        assert_eq!(q.push(b("bbbb")), Pushed::Queued { dropped: 0 });
        assert_eq!(q.push(b("cccc")), Pushed::Queued { dropped: 4 });
        assert_eq!(q.push(b("0123456789xy")), Pushed::Queued { dropped: 10 });
        let batch = q.pop().await.unwrap();
        assert_eq!(batch.dropped, 14);
        assert_eq!(batch.chunks, [b("23456789xy")]);
        q.push(b("z"));
        assert_eq!(
            q.pop().await.unwrap(),
            Batch {
                dropped: 0,
                chunks: vec![b("z")]
            }
        );
    }

    #[tokio::test]
    async fn disconnect_policy_closes_instead() {
        let q = OutputQueue::new(4, SlowPolicy::Disconnect);
        q.push(b("abc"));
        assert_eq!(q.push(b("de")), Pushed::Closed);
        assert_eq!(q.pop().await, None);
        assert_eq!(q.push(b("f")), Pushed::Closed);
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
