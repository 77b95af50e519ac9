//! guestlogd: owns the logs and consoles of virtual machines.
//!
//! `logdir` opens files inside a log directory without following what was
//! planted there; `rotator` writes capped files; `registry` holds the logs; `pipe` feeds
//! them from OpenPipe's pipes; `service` answers varlink calls; `transport`
//! guards the varlink socket; `daemon` ties them together.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod activation;
pub mod api;
pub mod config;
pub mod console;
pub mod daemon;
pub mod fdstore;
pub mod logdir;
pub mod name;
#[allow(unsafe_code)]
pub mod pipe;
pub mod queue;
pub mod registry;
pub mod relay;
pub mod restart;
pub mod rotator;
pub mod service;
pub mod state;
#[allow(unsafe_code)]
pub mod transport;
