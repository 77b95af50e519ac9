//! `Seats`: the host-wide cap on readers of output — console clients,
//! viewers and Follow streams together (`max-clients-total`).
//!
//! Each reader costs a descriptor and a queue, so the daemon's worst case
//! follows this one number instead of every console being full. A `Seat`
//! is taken before a reader is set up and given back when it is dropped:
//! the count never passes the cap, and never leaks a seat.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

/// The cap and how many seats are taken.
#[derive(Debug)]
pub struct Seats {
    taken: AtomicUsize,
    max: usize,
}

/// One reader's seat, given back when dropped.
#[derive(Debug)]
pub struct Seat(Arc<Seats>);

impl Seats {
    pub fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// A seat, or `None` when all `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Seat> {
        self.taken
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Seat(self.clone()))
    }

    /// A seat even past the cap: for a reader that exists already (a
    /// client carried over a restart whose configuration lowered the cap).
    pub fn take_past_cap(self: &Arc<Self>) -> Seat {
        self.taken.fetch_add(1, Relaxed);
        Seat(self.clone())
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_stop_at_the_cap_and_come_back() {
        let seats = Arc::new(Seats::new(2));
        let a = seats.take().unwrap();
        let _b = seats.take().unwrap();
        assert!(seats.take().is_none());
        drop(a);
        assert_eq!(seats.taken(), 1);
        assert!(seats.take().is_some());
    }
}
