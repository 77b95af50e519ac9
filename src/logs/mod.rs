//! The logs: every file guestlogd writes, from a validated name down to
//! the bytes on disk.
//!
//! Owns: log names (`name`), the checked directory access that never
//! follows what was planted (`logdir`), the capped rotating file
//! (`rotator`) and its `policy`, each log with its jobs and followers
//! (`log`), where files live (`places`), the registry of every known log
//! (`registry`), the pipes that feed logs (`pipe`), each log's export to
//! the journal (`journal`), the domains on the move between hosts
//! (`migration`), and the bounded queue
//! of one reader of output (`queue`), which a log's followers and a
//! console's clients both use, and the host-wide cap on those readers
//! (`seats`).
//!
//! Invariants: every file operation runs as a job on a blocking thread,
//! one at a time per log; no lock is held across file I/O that another
//! log needs; nothing here knows a console, a front or the saved state.
//!
//! May use: `fdstore`, `logging` and the crate root's helpers; nothing
//! else of the crate.

pub mod figures;
pub mod gap;
pub mod inventory;
pub mod journal;
pub mod log;
pub mod logdir;
pub mod migration;
pub mod name;
#[allow(unsafe_code)]
pub mod pipe;
pub mod places;
pub mod policy;
pub mod queue;
pub mod rate;
pub mod registry;
pub mod rotator;
pub mod seats;
pub mod usage;
pub mod vacuum;
