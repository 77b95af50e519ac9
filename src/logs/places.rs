//! `Places`: where log files live — the log directory, and the
//! directories of libvirt's path-addressed logs — each opened once and
//! reopened if it was replaced.
//!
//! A path-addressed log's directory is opened beneath the root it lies
//! under (`LogDir::open_beneath`): no symlink below the root is followed,
//! and a path under no root is refused here too, whatever a front checked.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{
    logdir::{BaseName, LogDir},
    name::LogName,
    rotator::RotatorError,
};
use crate::lock;

/// Where log files live: the log directory and the directories of
/// path-addressed logs, each opened once and reopened if it was replaced.
#[derive(Debug)]
pub struct Places {
    dir: PathBuf,
    /// The directories under which path-addressed logs may live.
    roots: Vec<PathBuf>,
    log_dir: Mutex<Option<Arc<LogDir>>>,
    path_dirs: Mutex<BTreeMap<PathBuf, Arc<LogDir>>>,
}

impl Places {
    pub fn new(dir: PathBuf, roots: Vec<PathBuf>) -> Self {
        Self {
            dir,
            roots,
            log_dir: Mutex::new(None),
            path_dirs: Mutex::default(),
        }
    }

    /// The file name a log has and the path it shows, without I/O.
    pub fn path_of(&self, name: &LogName) -> Result<(PathBuf, BaseName), RotatorError> {
        let Some(path) = name.as_path() else {
            let base = BaseName::for_log(name);
            return Ok((self.dir.join(base.as_str()), base));
        };
        let (_, base) = BaseName::split(path).map_err(|e| RotatorError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        Ok((path.to_owned(), base))
    }

    /// The directory a log's file is in, and its name there:
    /// `LOGDIR/NAME.log` for a plain name, the very file for a
    /// path-addressed one. Blocks: called in a log's job.
    pub fn place(&self, name: &LogName) -> Result<(Arc<LogDir>, BaseName), RotatorError> {
        let Some(path) = name.as_path() else {
            return Ok((self.log_dir()?, BaseName::for_log(name)));
        };
        let (parent, base) = BaseName::split(path).map_err(|e| RotatorError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let known = lock(&self.path_dirs).get(parent).cloned();
        if let Some(d) = known
            && d.still_at_path()
        {
            return Ok((d, base));
        }
        let (root, rel) = self.root_of(parent).ok_or_else(|| RotatorError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not under an allowed root",
            ),
        })?;
        let opened = Arc::new(LogDir::open_beneath(root, rel)?);
        lock(&self.path_dirs).insert(parent.to_owned(), opened.clone());
        Ok((opened, base))
    }

    /// The root `dir` lies in (the deepest, if roots nest), and the path
    /// below it.
    fn root_of<'a>(&'a self, dir: &'a Path) -> Option<(&'a Path, &'a Path)> {
        self.roots
            .iter()
            .filter_map(|root| Some((root.as_path(), dir.strip_prefix(root).ok()?)))
            .min_by_key(|(_, rel)| rel.components().count())
    }

    /// The log directory, opened on first use (and retried after a
    /// failure), so that a registry can be made without I/O.
    fn log_dir(&self) -> Result<Arc<LogDir>, RotatorError> {
        if let Some(d) = &*lock(&self.log_dir) {
            return Ok(d.clone());
        }
        let opened = Arc::new(LogDir::open(&self.dir)?);
        Ok(lock(&self.log_dir).get_or_insert(opened).clone())
    }
}

impl Places {
    /// The log directory's path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The roots of libvirt's logs.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}
