//! The switch between libvirt's virtlogd and guestlogd, as varlink calls:
//! UseFdStore (after `guestlogctl replace-virtlogd` has given guestlogd's
//! unit an FD store) and HandBackToVirtlogd (`guestlogctl
//! restore-virtlogd`).
//!
//! uid 0 only, whatever the config's access list says: each decides who
//! holds every domain's log. A hand-back that would close something is
//! refused, naming it, unless forced; one that is accepted is answered
//! first, then carried out by the daemon (`daemon::Exit::HandBack`).

use serde_json::json;

use super::{
    api::{self, ManagerError},
    framing,
    manager::Manager,
    wire::{WireError, int},
};
use crate::{fronts::server::Peer, handover::virtlogd::handback};

type Answer = framing::Answer<WireError>;

impl Manager {
    pub(super) fn use_fd_store(&self, caller: &Peer) -> Result<Answer, WireError> {
        root(caller)?;
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Err(ManagerError::IoError {
                message: "guestlogd has no service manager to keep its descriptors \
                          (NOTIFY_SOCKET is not set)"
                    .into(),
            }
            .into());
        }
        let stored = self.ops.registry.store().use_systemd();
        // A new state now, so that the store holds one that describes it.
        self.ops.saver.save_now();
        tracing::info!(
            stored,
            "systemd's FD store keeps every descriptor from now on"
        );
        Ok(Answer::Now(json!({ "storedFds": int(stored as u64) })))
    }

    pub(super) fn hand_back(
        &self,
        p: api::HandBackToVirtlogdInput,
        caller: &Peer,
    ) -> Result<Answer, WireError> {
        root(caller)?;
        let Some(request) = &self.hand_back else {
            return Err(refused(
                "guestlogd does not serve libvirt's socket: there is nothing to give virtlogd",
                vec![],
            ));
        };
        if let Some(why) = handback::virtlogd_missing() {
            return Err(refused(&why, vec![]));
        }
        let ops = &self.ops;
        let plan = handback::plan(&ops.registry, &ops.consoles, &ops.saver.origins);
        let closes = plan.closes();
        if !closes.is_empty() && p.force != Some(true) {
            return Err(refused(
                &format!(
                    "a hand-back would close what virtlogd cannot take: {}",
                    closes.join(", ")
                ),
                closes,
            ));
        }
        let connections = self.libvirt.as_ref().map_or(0, |(_, t)| t.len());
        tracing::info!(
            pipes = plan.pipes.len(),
            connections,
            closing = ?closes,
            "handing libvirt's logs back to virtlogd, as asked"
        );
        request.asked.cancel();
        Ok(Answer::Now(json!({
            "pipes": plan.pipes,
            "connections": int(connections as u64),
            "closed": closes,
        })))
    }
}

fn root(caller: &Peer) -> Result<(), WireError> {
    if caller.uid == 0 {
        return Ok(());
    }
    Err(ManagerError::PermissionDenied {
        uid: caller.uid.into(),
    }
    .into())
}

fn refused(reason: &str, closes: Vec<String>) -> WireError {
    ManagerError::HandBackRefused {
        reason: reason.to_owned(),
        closes,
    }
    .into()
}
