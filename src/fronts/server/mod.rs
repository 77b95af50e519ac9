//! Connections, for every front end: an accept loop and one task per
//! connection.
//!
//! The model (mini-redis's): `listener` takes a slot under the daemon-wide
//! and the per-uid caps, then hands each accepted socket to its front's
//! `serve` in a task of its own. The task owns a `Conn`: the socket, its
//! read buffer and its deadlines. Calls on one connection are answered in
//! order, one at a time; calls on different connections run concurrently.
//! Whatever a peer does — stop reading, send half a message, pass FDs, go
//! quiet — costs only its own task and slot:
//!
//! - a reply that makes no progress for `write_timeout` closes the
//!   connection; a connection holds at most the one reply it is writing
//!   (beyond the kernel's socket buffer), since it reads no further call
//!   until that reply is out;
//! - a message not complete `message_timeout` after its first byte, or
//!   larger than `max_message`, closes the connection;
//! - a connection with no call in progress for `idle_timeout` is closed;
//! - FDs a peer passes are closed as they arrive, counted, and the
//!   connection is closed: no front takes FDs from callers.
//!
//! Each such close is counted in `Counters` and logged, rate-limited.
//!
//! `socket` binds the listeners the daemon makes itself.

#[allow(unsafe_code)]
pub mod conn;
pub mod limits;
pub mod listener;
pub mod socket;

pub use conn::{Conn, ConnError, Framing, Peer};
pub use limits::{ConnLimits, Counters};
pub use listener::{Conns, Front, accept_adopting, accept_loop};
pub use socket::{BindError, bind, listen_on};
