//! guestlogd: owns the logs and consoles of virtual machines.
//!
//! `logdir` opens files inside a log directory without following what was
//! planted there; `rotator` writes capped files; `registry` holds the logs;
//! `pipe` feeds them from OpenPipe's pipes; `ops` is what guestlogd does,
//! whichever front asks; `server` accepts connections and gives each a
//! task; `varlink` (with `service`) and `virtlogd` are the two fronts;
//! `daemon` ties them together. `console`, `relay` and `queue` make
//! consoles, with `writers` (who may type) and `boot` (a console's boot
//! log) beside the relay.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod activation;
pub mod api;
pub mod boot;
pub mod config;
pub mod console;
pub mod daemon;
pub mod fdstore;
pub mod log;
pub mod logdir;
pub mod name;
pub mod ops;
#[allow(unsafe_code)]
pub mod pipe;
pub mod queue;
pub mod ratelimit;
pub mod registry;
pub mod relay;
pub mod restart;
pub mod rotator;
pub mod server;
pub mod service;
pub mod state;
pub mod varlink;
pub mod virtlogd;
pub mod writers;
