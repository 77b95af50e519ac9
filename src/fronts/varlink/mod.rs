//! The varlink front: `io.guestlogd.Manager` and `org.varlink.service` on
//! the daemon's varlink socket.
//!
//! `framing` reads and writes varlink messages over a `Service`, knowing
//! nothing of the interface; `manager` is that service, a switchboard that
//! validates each call (`wire`), calls `ops` and encodes the answer, with
//! `follow` for Follow's stream, `introspect` for `org.varlink.service`
//! and `switch` for the calls of the switch to and from virtlogd.
//! `api` holds the wire types `build.rs` generates from
//! `interfaces/io.guestlogd.Manager.varlink`.

pub mod api;
mod follow;
pub mod framing;
pub mod introspect;
pub mod manager;
mod switch;
pub mod wire;
