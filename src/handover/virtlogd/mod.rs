//! libvirt's virtlogd, in its own process: taking over from it through its
//! SIGUSR1 re-exec, and handing back to it.
//!
//! On SIGUSR1 (`systemctl reload virtlogd`) virtlogd writes its whole state
//! to `/run/virtlogd-restart-exec.json` and executes its own argv[0] with
//! every domain's log pipe, libvirt's listening socket and its clients
//! inherited; whatever is at `/usr/sbin/virtlogd` then owns them, in the
//! same process, which systemd still sees as virtlogd.service.
//!
//! Owns: that file's format (`format`), taking it over at start
//! (`inherit`), which logs libvirt opened and for which domain (`origins`,
//! kept in guestlogd's own saved state), writing it for virtlogd again
//! (`handback`), and what both do to the process (`process`: paths, the
//! exec of the real virtlogd, descriptors, the pid file).
//!
//! Invariants:
//! - a successor never dies with the pipes in its hands: until the daemon
//!   has taken everything over, any failure executes the real virtlogd
//!   with the state file put back (`inherit::Kit`);
//! - a hand-back that fails leaves guestlogd serving with everything;
//! - under virtlogd's sandbox nothing here makes a system call it forbids
//!   (no chown, no setuid; `crate::may_chown` guards the daemon's own).
//!
//! May use: `logs` (names), `consoles` and the registry (a hand-back's
//! plan), `activation`'s names, `fdstore`, `logging`.

pub mod format;
pub mod handback;
#[allow(unsafe_code)]
pub mod inherit;
pub mod origins;
#[allow(unsafe_code)]
pub mod process;
