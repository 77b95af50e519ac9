//! The fronts: each protocol the daemon speaks, as a switchboard that
//! decodes the wire into validated values, calls `ops`, and encodes the
//! answer.
//!
//! Owns: the connection layer every front shares (`server`: accept loop,
//! per-connection task, limits), the varlink front (`varlink`) and
//! libvirt's log protocol (`virtlogd`). A new protocol is a new folder
//! here.
//!
//! Invariants: a front never touches a file, a pipe or a console itself;
//! whatever a peer does costs only its own connection task and slot.
//!
//! May use: `ops`, the types of the layers below it that `ops` takes and
//! returns, `config`, `logging` and the crate root's helpers.

pub mod metrics;
pub mod server;
pub mod varlink;
pub mod virtlogd;
