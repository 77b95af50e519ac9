//! A log's export to the journal (`logs::journal`): turned on and off by
//! calls, and run in the log's own jobs, right after each write.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use super::{Log, Slot, Wait};
use crate::{
    error_chain, lock,
    logs::{
        journal::{
            Exporter, Journal,
            cursors::Record,
            export::{Export, Pumped, Settings, Shared},
        },
        rotator::RotatingFile,
    },
};

impl Log {
    /// Exports this log's new lines to the journal from now on (or with
    /// new settings, if it does already); `carried` is where a previous
    /// guestlogd's export stood.
    pub fn enable_journal(
        self: &Arc<Self>,
        journal: &Arc<Journal>,
        settings: Settings,
        carried: Option<Record>,
    ) {
        let mut export = lock(&self.export);
        match export.as_mut() {
            Some(e) => e.set(settings),
            None => {
                let name = self.name.to_string();
                let me: std::sync::Weak<dyn Exporter> = Arc::downgrade(self) as _;
                journal.register(me.clone());
                *export = Some(Export::new(
                    journal.clone(),
                    self.journal.clone(),
                    &name,
                    settings,
                    carried,
                    me,
                ));
            }
        }
    }

    /// Stops exporting to the journal.
    pub fn disable_journal(&self) {
        self.journal.on.store(false, Relaxed);
        lock(&self.export).take();
    }

    /// Whether the log exports to the journal.
    pub fn exports(&self) -> bool {
        self.journal.on.load(Relaxed)
    }

    /// The export's figures and settings.
    pub fn journal(&self) -> &Arc<Shared> {
        &self.journal
    }

    /// QEMU's pid for `OBJECT_PID`, once a console's guest connects.
    pub fn set_journal_pid(&self, pid: i32) {
        self.journal
            .object_pid
            .store(u64::try_from(pid).unwrap_or(0), Relaxed);
    }

    /// In a job, when a call enabled the export or emptied the file on
    /// purpose: the export begins at the file's end (or goes on from
    /// where it stands).
    pub fn journal_begin(&self, f: &RotatingFile, emptied: bool) {
        if let (Some(e), Ok(end)) = (lock(&self.export).as_mut(), f.end()) {
            e.begin_at(end, emptied);
        }
    }

    /// Sends the log's new lines to the journal, in a job's turn.
    pub(super) fn export_in(&self, slot: &mut Slot) {
        let mut export = lock(&self.export);
        let (Some(e), Some(f)) = (export.as_mut(), slot.as_mut()) else {
            return;
        };
        match e.pump(f) {
            Ok(Pumped::Done) => {}
            Ok(Pumped::Behind) => e.wait(),
            Err(err) => {
                crate::limited!(warn, log = %self.name, error = %error_chain(&err), "journal export cannot read the log");
            }
        }
    }
}

impl Exporter for Log {
    fn catch_up(self: Arc<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let _ = self
                .run(Wait::Forever, |log, slot| {
                    if let Some(e) = lock(&log.export).as_mut() {
                        e.waiting = false;
                    }
                    log.file(slot)?;
                    log.export_in(slot);
                    Ok(())
                })
                .await;
        })
    }

    fn tick(&self) {
        // A job that holds the export ends the episode itself.
        if let Ok(mut export) = self.export.try_lock()
            && let Some(e) = export.as_mut()
        {
            e.end_episode();
        }
    }
}
