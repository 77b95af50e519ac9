//! The metrics front: systemd's `io.systemd.Metrics` on a socket of its
//! own (`/run/systemd/report/io.guestlogd` under systemd, where
//! `systemd-report` looks; `[metrics] socket` without activation).
//!
//! Owns: the family table and the lazy listing of metrics (`families`),
//! and the service that answers List and Describe (`service`), served by
//! the varlink framing over the shared connection layer (`server`).
//!
//! Invariants: the socket serves only this interface and introspection,
//! to anyone who reaches it (mode 0666 by default); it shows names and
//! numbers, never log content; a caller holds no log or console, so a
//! slow one costs only its own connection.
//!
//! May use: what the varlink front may, and its framing.

pub mod families;
pub mod service;
