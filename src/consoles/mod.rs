//! The consoles: a serial port's one chardev backend, relayed to every
//! client and teed into its log.
//!
//! Owns: the table of consoles and their sockets (`table`), what one
//! console is (`console`), the relay task that owns a console's guest
//! connection (`relay`) and its clients (`clients`), their input on its
//! way to the guest (`input`), who may type
//! (`writers`), and the boot log (`boot`).
//!
//! Invariants: one console, one relay task, which owns the guest stream,
//! the log and the client table; the guest and the log never wait for a
//! client; a client's queue is bounded in memory and freed when it leaves.
//!
//! May use: `logs` (names, logs, the registry, queues), `fdstore`,
//! `logging` and the crate root's helpers. Nothing here knows a front,
//! the operations or the saved state's format.

pub mod boot;
mod client;
mod clients;
pub mod console;
mod input;
pub mod relay;
pub mod table;
pub mod writers;
