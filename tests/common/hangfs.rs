//! tests/stuck/hangfs.py mounted for a test: a FUSE file system whose
//! writes to `stuck*` files hang, or to `failing*` files fail with EIO, on
//! demand. Use it with `#[path = "common/hangfs.rs"] mod hangfs;` beside
//! `mod common`.
#![allow(dead_code)]

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::common::tool;

/// The FUSE file system, unmounted when dropped.
pub struct HangFs {
    server: Child,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl HangFs {
    /// Mounts it at `mountpoint` over `backing`, or says why it cannot.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Self, String> {
        let python = tool("python")?;
        fs::create_dir_all(backing).map_err(|e| e.to_string())?;
        fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stuck/hangfs.py");
        let server = Command::new(python)
            .arg(script)
            .arg(backing)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start hangfs.py: {e}"))?;
        let mut fs = Self {
            server,
            backing: backing.to_owned(),
            mountpoint: mountpoint.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs.mounted() {
            if let Ok(Some(status)) = fs.server.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = fs.server.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("hangfs.py exited ({status}): {}", err.trim()));
            }
            if Instant::now() > deadline {
                return Err("the FUSE mount did not appear in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(fs)
    }

    pub fn mounted(&self) -> bool {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let at = self.mountpoint.display().to_string();
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(at.as_str()) && l.contains("fuse"))
    }

    pub fn hang(&self) {
        fs::write(self.backing.join(".hang"), b"").unwrap();
    }

    pub fn recover(&self) {
        let _ = fs::remove_file(self.backing.join(".hang"));
    }

    /// Whether a write to `file` is held now.
    pub fn holds(&self, file: &str) -> bool {
        self.backing.join(format!(".blocked-{file}")).exists()
    }

    /// Writes to `failing*` files fail with EIO from now on.
    pub fn fail_writes(&self) {
        fs::write(self.backing.join(".eio"), b"").unwrap();
    }

    pub fn heal(&self) {
        let _ = fs::remove_file(self.backing.join(".eio"));
    }

    /// What `file` holds, read past the FUSE layer.
    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.backing.join(file)).unwrap_or_default()
    }
}

impl Drop for HangFs {
    fn drop(&mut self) {
        self.recover();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
