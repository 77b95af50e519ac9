//! guestlogd: owns the logs and consoles of virtual machines.
//!
//! `rotator` writes capped files; `registry` holds the logs; `pipe` feeds
//! them from OpenPipe's pipes; `server` accepts connections and gives each
//! a task; `varlink` speaks the protocol on them and `service` answers its
//! calls; `daemon` ties them together.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod activation;
pub mod api;
pub mod config;
pub mod console;
pub mod daemon;
pub mod fdstore;
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
