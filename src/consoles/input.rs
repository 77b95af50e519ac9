//! `Input`: what a console's clients typed, on its way to the guest.
//!
//! Clients' tasks put what they read here; the relay writes it to the
//! guest without blocking, in order. Bounded in bytes (`INPUT_CAP`): past
//! it a client that types waits for room, and only it does (its output
//! goes on). Nothing is allocated until someone types, and what the guest
//! took is freed at once.

use std::{collections::VecDeque, io, sync::Mutex};

use bytes::Bytes;
use tokio::{
    net::UnixStream,
    sync::{Notify, Semaphore},
};

use crate::lock;

/// Client input waiting for the guest to read it.
pub(super) const INPUT_CAP: usize = 64 * 1024;

/// The queue between the clients and the guest.
#[derive(Debug)]
pub(super) struct Input {
    chunks: Mutex<VecDeque<Bytes>>,
    /// Room left, in bytes: a client takes permits before it queues,
    /// the relay gives them back once the guest has the bytes.
    room: Semaphore,
    /// Told when something was queued.
    ready: Notify,
}

impl Input {
    pub(super) fn new() -> Self {
        Self {
            chunks: Mutex::new(VecDeque::new()),
            room: Semaphore::new(INPUT_CAP),
            ready: Notify::new(),
        }
    }

    /// Queues what `data` holds (at most `INPUT_CAP` bytes) once there is
    /// room for it. Cancelled while it waits, it leaves `data` as it was.
    pub(super) async fn send(&self, data: &mut Option<Bytes>) {
        let Some(n) = data.as_ref().map(Bytes::len) else {
            return;
        };
        let n = u32::try_from(n.min(INPUT_CAP)).unwrap_or(u32::MAX);
        // Never closed: the semaphore lives as long as the console.
        if let Ok(permit) = self.room.acquire_many(n).await {
            permit.forget();
        }
        if let Some(data) = data.take() {
            lock(&self.chunks).push_back(data);
            self.ready.notify_one();
        }
    }

    /// Waits until something is queued (a permit is kept if it already
    /// is, so nothing queued before the wait is missed).
    pub(super) async fn ready(&self) {
        self.ready.notified().await;
    }

    pub(super) fn is_empty(&self) -> bool {
        lock(&self.chunks).is_empty()
    }

    /// Writes what is queued to `guest` without blocking, in order; returns
    /// the bytes written. `WouldBlock` only if nothing could be written.
    pub(super) fn write_to(&self, guest: &UnixStream) -> io::Result<usize> {
        let mut chunks = lock(&self.chunks);
        let mut written = 0;
        while let Some(front) = chunks.front_mut() {
            match guest.try_write(front) {
                Ok(n) => {
                    written += n;
                    self.room.add_permits(n);
                    if n == front.len() {
                        chunks.pop_front();
                    } else {
                        *front = front.slice(n..);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && written > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if chunks.is_empty() {
            // Freed, not kept for the next keystroke.
            *chunks = VecDeque::new();
        }
        Ok(written)
    }

    /// Forgets what is queued: it was for a guest that left.
    pub(super) fn clear(&self) {
        let chunks = std::mem::take(&mut *lock(&self.chunks));
        self.room.add_permits(chunks.iter().map(Bytes::len).sum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn input_reaches_the_guest_in_order_and_frees_its_room() {
        let input = Input::new();
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.writable().await.unwrap();
        input.send(&mut Some(Bytes::from_static(b"ab"))).await;
        input.send(&mut Some(Bytes::from_static(b"cd"))).await;
        assert!(!input.is_empty());
        assert_eq!(input.write_to(&ours).unwrap(), 4);
        assert!(input.is_empty());
        let mut buf = [0; 8];
        theirs.readable().await.unwrap();
        let n = theirs.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"abcd");
        assert_eq!(input.room.available_permits(), INPUT_CAP);
        input.send(&mut Some(Bytes::from_static(b"ef"))).await;
        input.clear();
        assert_eq!(input.room.available_permits(), INPUT_CAP);
    }
}
