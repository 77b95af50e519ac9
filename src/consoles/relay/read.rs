//! Reading the guest: reads start small after an idle spell and double
//! while they come back full, up to `CHUNK`; an idle console holds no read
//! buffer, and the memory a read took goes back to the kernel.

use std::io;

use bytes::Bytes;
use tracing::debug;

use super::{FIRST_READ, Relay};
use crate::logs::queue;

/// The most read from the guest at once (and at most half a client's
/// queue, so that a read always fits in the queue of a client that keeps
/// up: see `Relay::max_read`).
const CHUNK: usize = 128 * 1024;

thread_local! {
    /// Where first reads land, on the worker thread.
    static SMALL: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; FIRST_READ]);
}

impl Relay {
    /// One read from the guest, into the relay's buffer, which it then
    /// shares with the log and the clients; `None` if it had nothing (the
    /// buffer is then given back) or left.
    pub(super) fn take_guest_output(&mut self) -> Option<Bytes> {
        let guest = self.guest.as_ref()?;
        if self.want == FIRST_READ {
            return self.take_small_output();
        }
        // Reuses the last read's memory once the log and the clients are
        // done with it; else takes new.
        self.buf.reserve(self.want);
        let room = self.buf.capacity();
        match guest.try_read_buf(&mut self.buf) {
            Ok(0) => self.guest_gone(),
            Ok(n) => {
                if n == room {
                    self.want = (self.want * 2).min(self.max_read());
                }
                return Some(self.buf.split().freeze());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Idle: an idle console holds no buffer, and the memory
                // goes back to the kernel.
                let freed = std::mem::take(&mut self.buf).capacity();
                self.want = FIRST_READ;
                queue::give_back(freed);
            }
            Err(e) => {
                debug!(error = %e, "guest read failed");
                self.guest_gone();
            }
        }
        None
    }

    /// The first read after the guest was idle, into the thread's buffer
    /// and copied out at its size: a few bytes typed or printed cost a few
    /// bytes, not a read buffer. One that fills it starts large reads.
    fn take_small_output(&mut self) -> Option<Bytes> {
        let guest = self.guest.as_ref()?;
        let read = SMALL.with_borrow_mut(|buf| {
            guest
                .try_read(buf)
                .map(|n| (n, Bytes::copy_from_slice(&buf[..n])))
        });
        match read {
            Ok((0, _)) => self.guest_gone(),
            Ok((n, data)) => {
                if n == FIRST_READ {
                    self.want = 2 * FIRST_READ;
                }
                return Some(data);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, "guest read failed");
                self.guest_gone();
            }
        }
        None
    }

    /// The largest read: `CHUNK`, or half a client's queue if that is
    /// less, so that a read a client's socket does not take at once can
    /// wait in its queue instead of being dropped.
    fn max_read(&self) -> usize {
        CHUNK.min(self.settings.queue / 2).max(FIRST_READ)
    }
}
