//! The daemon's own logging: what it says about itself, apart from the
//! logs it keeps for guests.
//!
//! Owns: `ratelimit` (`limited!`, at most a few lines a second from each
//! call site an outsider can trigger) and `events` (the fixed
//! `MESSAGE_ID`s of the events an operator matches or alerts on, with
//! their catalog). A leaf: it uses nothing of the crate, and any floor may
//! use it.

pub mod events;
pub mod ratelimit;
