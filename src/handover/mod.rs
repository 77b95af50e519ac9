//! The hand-over between daemons: what passes from one guestlogd to the
//! next across a restart, a re-exec or a crash.
//!
//! Owns: the descriptors passed at start (`activation`), the saved state's
//! format (`state`), taking over from a previous guestlogd and saving for
//! the next one (`restart`), and the same with libvirt's virtlogd in its
//! own process, both ways (`virtlogd`).
//!
//! Invariants: a call that stores a new descriptor saves the state before
//! it replies; descriptors that arrive with no call carry in their names
//! all a successor needs; a stored descriptor the state does not describe
//! is closed, and that is never fatal.
//!
//! May use: `consoles` (to restart them), `logs`, `config`, `fdstore`, and
//! the crate root's helpers. Nothing here knows a front.

#[allow(unsafe_code)]
pub mod activation;
pub mod restart;
pub mod state;
pub mod virtlogd;
