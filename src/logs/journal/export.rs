//! `Export`: one log's lines sent to the journal, read back from the
//! log's own file after each write, in the log's turn.
//!
//! The file is the source, not the bytes in flight: the export keeps a
//! position (the first byte not yet sent), so a line that arrives in
//! pieces is sent whole once its newline is in the file, a slow journald
//! only makes the export fall behind (it never holds a guest or a write,
//! and nothing is buffered in memory), and a restart or a crash resumes
//! exactly where the position says (`cursors`). What stays in memory is
//! the position and how many bytes past it hold no newline yet, so each
//! byte is read back at most twice however it arrives.
//!
//! A line longer than journald's line limit (`LINE_MAX`, journald's own
//! `LineMax=` default) is sent in parts, each marked with
//! `GUESTLOGD_LINE_PART=N` (from 1) and all but the last with
//! `GUESTLOGD_LINE_BREAK=line-max`, as journald marks lines it cuts.
//! The budget (`budget`) decides per entry; what it suppresses is counted
//! and passed over, and each episode ends in one "suppressed N lines"
//! entry (`events::JOURNAL_SUPPRESSED`).

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use super::{
    Exporter, Journal, Sent,
    budget::{Bucket, Episode},
    cursors::Record,
    native,
};
use crate::{
    lock,
    logs::rotator::{Pos, RotatingFile, RotatorError},
};

/// journald's default `LineMax=`: longer lines are sent in parts.
pub const LINE_MAX: usize = 48 * 1024;
/// The most read back at once.
const CHUNK: usize = 64 * 1024;

/// Who writes the log, for `GUESTLOGD_KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Console,
    Pipe,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Pipe => "pipe",
        }
    }
}

/// What a log's entries say besides the line: validated by the front.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub kind: Kind,
    pub vm_name: Option<String>,
    /// Canonical: 36 lowercase hex digits and dashes.
    pub vm_uuid: Option<String>,
}

/// A log's export figures, readable without its turn (ListLogs, the
/// metrics, the saved state), and its settings.
#[derive(Debug, Default)]
pub struct Shared {
    pub on: AtomicBool,
    pub sent: AtomicU64,
    pub suppressed: AtomicU64,
    pub inode: AtomicU64,
    pub offset: AtomicU64,
    pub episode: AtomicU64,
    /// QEMU's pid, when known (a console's guest in our PID namespace).
    pub object_pid: AtomicU64,
    pub settings: Mutex<Option<Settings>>,
}

impl Shared {
    /// The position and figures as the saved state keeps them.
    pub fn record(&self) -> Record {
        Record {
            inode: self.inode.load(Relaxed),
            offset: self.offset.load(Relaxed),
            sent: self.sent.load(Relaxed),
            suppressed: self.suppressed.load(Relaxed),
            episode: self.episode.load(Relaxed),
        }
    }

    pub fn settings(&self) -> Option<Settings> {
        lock(&self.settings).clone()
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Everything complete was sent (or suppressed).
    Done,
    /// journald took no more: call again when it does.
    Behind,
}

/// One entry's fate.
enum Emitted {
    Sent,
    Suppressed,
    Blocked,
}

/// One log's export: see the module doc.
#[derive(Debug)]
pub struct Export {
    journal: Arc<Journal>,
    shared: Arc<Shared>,
    name: String,
    /// `GUESTLOGD_LOG`, `GUESTLOGD_KIND`, `VM_*`, `SYSLOG_IDENTIFIER`.
    fields: Vec<u8>,
    /// The record in `cursors`, if the table could be made.
    index: Option<usize>,
    /// The first byte not yet sent; `None` until the first pump, which
    /// starts at the file's end (the export begins with new output).
    cursor: Option<Pos>,
    /// Bytes from the cursor, in its file, known to hold no newline.
    scanned: u64,
    /// Parts of the current long line sent so far.
    part: u32,
    /// The file's rotations when last seen, to notice a truncation in
    /// place (`maxBackups` 0) that kept the inode.
    rotations: u64,
    budget: Bucket,
    episode: Episode,
    /// Registered with the journal as behind.
    pub(crate) waiting: bool,
    /// The log, as the journal calls it back.
    owner: Weak<dyn Exporter>,
}

impl Export {
    /// Starts exporting `name`: at `start` (a position carried over), or
    /// at the file's end on the first pump.
    pub fn new(
        journal: Arc<Journal>,
        shared: Arc<Shared>,
        name: &str,
        settings: Settings,
        carried: Option<Record>,
        owner: Weak<dyn Exporter>,
    ) -> Self {
        let claimed = journal.cursors.claim(name);
        // The record is never older than the state: it is written at
        // every line.
        let record = claimed.and_then(|(_, r)| r).or(carried);
        let fields = encode_fields(name, &settings);
        *lock(&shared.settings) = Some(settings);
        let mut export = Self {
            budget: Bucket::new(journal.limits),
            journal,
            name: name.to_owned(),
            fields,
            index: claimed.map(|(i, _)| i),
            cursor: None,
            scanned: 0,
            part: 0,
            rotations: 0,
            episode: Episode::default(),
            waiting: false,
            owner,
            shared,
        };
        if let Some(r) = record {
            export.cursor = (r.inode != 0).then_some(Pos {
                inode: r.inode,
                offset: r.offset,
            });
            export.shared.sent.store(r.sent, Relaxed);
            export.shared.suppressed.store(r.suppressed, Relaxed);
            export.episode.lines = r.episode;
        }
        export.shared.on.store(true, Relaxed);
        export.publish();
        export
    }

    /// New settings for a running export (a later call named the VM).
    pub fn set(&mut self, settings: Settings) {
        self.fields = encode_fields(&self.name, &settings);
        *lock(&self.shared.settings) = Some(settings);
    }

    /// Begins at `end` if the export has no position yet, or if the file
    /// was emptied on purpose (`restart`).
    pub fn begin_at(&mut self, end: Pos, restart: bool) {
        if self.cursor.is_none() || restart {
            self.restart_at(end);
        }
    }

    fn restart_at(&mut self, end: Pos) {
        self.cursor = Some(end);
        self.scanned = 0;
        self.part = 0;
        self.publish();
    }

    /// Asks the journal to call back once journald takes more.
    pub fn wait(&mut self) {
        if !std::mem::replace(&mut self.waiting, true) {
            self.journal.behind(self.owner.clone());
        }
    }

    /// Sends every complete line the file holds past the position.
    pub fn pump(&mut self, f: &mut RotatingFile) -> Result<Pumped, RotatorError> {
        let end = f.end()?;
        let rotated = std::mem::replace(&mut self.rotations, f.rotations()) != f.rotations();
        let Some(mut cursor) = self.cursor else {
            self.restart_at(end);
            return Ok(Pumped::Done);
        };
        if cursor.inode == end.inode
            && (cursor.offset > end.offset || (rotated && f.policy().max_backups == 0))
        {
            // Truncated in place: what was past the position is gone.
            cursor.offset = 0;
            self.scanned = 0;
            self.part = 0;
        }
        loop {
            let step = if cursor.inode == end.inode {
                self.pump_current(f, &mut cursor, end)?
            } else {
                self.pump_backups(f, &mut cursor)?
            };
            self.cursor = Some(cursor);
            match step {
                Step::More => {}
                Step::Done => return Ok(Pumped::Done),
                Step::Blocked => return Ok(Pumped::Behind),
            }
        }
    }

    /// The common case: the position is in the current file.
    fn pump_current(
        &mut self,
        f: &RotatingFile,
        cursor: &mut Pos,
        end: Pos,
    ) -> Result<Step, RotatorError> {
        let from = cursor.offset + self.scanned;
        if from >= end.offset {
            return Ok(Step::Done);
        }
        let data = f.read_current(from, CHUNK)?;
        let full = data.len() == CHUNK;
        let mut at = 0;
        while let Some(i) = data[at..].iter().position(|b| *b == b'\n') {
            let nl = at + i;
            let line = if self.scanned > 0 {
                let mut line = f.read_current(cursor.offset, self.scanned as usize)?;
                line.extend_from_slice(&data[..nl]);
                line
            } else {
                data[at..nl].to_vec()
            };
            // A line the prefix made too long goes in parts too.
            let mut done = 0;
            while line.len() - done > LINE_MAX {
                if let Emitted::Blocked = self.emit(&line[done..done + LINE_MAX], false) {
                    self.scanned = 0;
                    return Ok(Step::Blocked);
                }
                done += LINE_MAX;
                cursor.offset += LINE_MAX as u64;
                self.save(*cursor);
            }
            if let Emitted::Blocked = self.emit(&line[done..], true) {
                // Scanned again from the position next time.
                self.scanned = 0;
                return Ok(Step::Blocked);
            }
            cursor.offset = from + nl as u64 + 1;
            self.scanned = 0;
            self.save(*cursor);
            at = nl + 1;
        }
        self.scanned = from + data.len() as u64 - cursor.offset;
        while self.scanned >= LINE_MAX as u64 {
            let part = f.read_current(cursor.offset, LINE_MAX)?;
            if let Emitted::Blocked = self.emit(&part, false) {
                return Ok(Step::Blocked);
            }
            cursor.offset += LINE_MAX as u64;
            self.scanned -= LINE_MAX as u64;
            self.save(*cursor);
        }
        Ok(if full { Step::More } else { Step::Done })
    }

    /// After a rotation, or a position a restart carried over: read
    /// through the backups, one line at a time.
    fn pump_backups(
        &mut self,
        f: &mut RotatingFile,
        cursor: &mut Pos,
    ) -> Result<Step, RotatorError> {
        self.scanned = 0;
        let chunk = f.read(Some(*cursor), LINE_MAX + 1)?;
        if chunk.skipped {
            // Rotated away before it was sent: the journal misses it.
            crate::limited!(warn, log = %self.name, "journal export fell behind the log's backups: lines were skipped");
            self.part = 0;
            *cursor = f.read(Some(*cursor), 0)?.next;
            return Ok(Step::More);
        }
        let newline = chunk.data.iter().position(|b| *b == b'\n');
        let (len, last) = match newline {
            Some(i) => (i, true),
            None if chunk.data.len() > LINE_MAX => (LINE_MAX, false),
            // A line still being written: wait for its end.
            None if chunk.eof => {
                if chunk.data.is_empty() && chunk.next != *cursor {
                    *cursor = chunk.next;
                    return Ok(Step::More);
                }
                return Ok(Step::Done);
            }
            None => return Ok(Step::Done),
        };
        let consumed = len + usize::from(last);
        // Within one file the next position is plain arithmetic; across
        // files the rotator says where it is.
        let next = if chunk.next.inode == cursor.inode {
            Pos {
                inode: cursor.inode,
                offset: cursor.offset + consumed as u64,
            }
        } else {
            f.read(Some(*cursor), consumed)?.next
        };
        if let Emitted::Blocked = self.emit(&chunk.data[..len], last) {
            return Ok(Step::Blocked);
        }
        *cursor = next;
        self.save(next);
        Ok(Step::More)
    }

    /// One entry (a line, or a part of one), if the budget allows.
    fn emit(&mut self, line: &[u8], last: bool) -> Emitted {
        let now = Instant::now();
        if !self.budget.take(now) {
            self.episode.suppressed(now);
            self.shared.suppressed.fetch_add(1, Relaxed);
            self.advance_part(last);
            return Emitted::Suppressed;
        }
        if self.episode.ended(now) && !self.report_episode() {
            self.budget.refund();
            return Emitted::Blocked;
        }
        let mut entry = Vec::with_capacity(self.fields.len() + line.len() + 64);
        entry.extend_from_slice(&self.fields);
        native::text(&mut entry, "PRIORITY", "6");
        let pid = self.shared.object_pid.load(Relaxed);
        if pid > 0 {
            native::text(&mut entry, "OBJECT_PID", &pid.to_string());
        }
        if !last || self.part > 0 {
            native::text(
                &mut entry,
                "GUESTLOGD_LINE_PART",
                &(self.part + 1).to_string(),
            );
        }
        if !last {
            native::text(&mut entry, "GUESTLOGD_LINE_BREAK", "line-max");
        }
        // A serial console ends its lines in CR LF.
        let message = if last {
            line.strip_suffix(b"\r").unwrap_or(line)
        } else {
            line
        };
        native::binary(&mut entry, "MESSAGE", message);
        match self.journal.send(&entry) {
            Sent::Yes => {
                self.shared.sent.fetch_add(1, Relaxed);
                self.advance_part(last);
                Emitted::Sent
            }
            Sent::No => {
                self.budget.refund();
                Emitted::Blocked
            }
        }
    }

    fn advance_part(&mut self, last: bool) {
        self.part = if last { 0 } else { self.part + 1 };
    }

    /// Ends an episode that has been quiet long enough with its one entry;
    /// false if journald did not take it (it is sent later).
    pub fn end_episode(&mut self) -> bool {
        if !self.episode.ended(Instant::now()) {
            return true;
        }
        self.report_episode()
    }

    fn report_episode(&mut self) -> bool {
        let n = self.episode.lines;
        let mut entry = self.fields.clone();
        native::text(&mut entry, "PRIORITY", "4");
        native::text(
            &mut entry,
            "MESSAGE_ID",
            crate::logging::events::JOURNAL_SUPPRESSED,
        );
        native::text(&mut entry, "GUESTLOGD_SUPPRESSED", &n.to_string());
        let l = self.journal.limits;
        let message = format!(
            "guestlogd: suppressed {n} lines of {} (journal budget: {} lines/s, burst {}); the log's file has them",
            self.name, l.per_second, l.burst
        );
        native::text(&mut entry, "MESSAGE", &message);
        if self.journal.send(&entry) == Sent::No {
            return false;
        }
        self.episode = Episode::default();
        if let Some(c) = self.cursor {
            self.save(c);
        }
        true
    }

    /// Publishes the position and figures, and writes the record.
    fn save(&mut self, cursor: Pos) {
        self.cursor = Some(cursor);
        self.publish();
        if let Some(i) = self.index {
            self.journal
                .cursors
                .write(i, &self.name, &self.shared.record());
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        if let Some(c) = self.cursor {
            s.inode.store(c.inode, Relaxed);
            s.offset.store(c.offset, Relaxed);
        }
        s.episode.store(self.episode.lines, Relaxed);
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.journal.cursors.free(i);
        }
    }
}

enum Step {
    More,
    Done,
    Blocked,
}

fn encode_fields(name: &str, s: &Settings) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    native::text(&mut f, "SYSLOG_IDENTIFIER", "guestlogd");
    native::text(&mut f, "GUESTLOGD_LOG", name);
    native::text(&mut f, "GUESTLOGD_KIND", s.kind.as_str());
    if let Some(v) = &s.vm_name {
        native::text(&mut f, "VM_NAME", v);
    }
    if let Some(v) = &s.vm_uuid {
        native::text(&mut f, "VM_UUID", v);
    }
    f
}
