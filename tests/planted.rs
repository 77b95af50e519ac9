//! Things a hostile local user plants in the log directory, against the
//! real daemon: a symlink or a directory where a log file belongs is never
//! followed, its target is left byte-for-byte as it was, and the daemon goes
//! on serving every other log.

mod common;

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::PathBuf,
};

use base64::Engine as _;
use common::{Daemon, call};
use guestlogd::api::ManagerError;
use serde_json::{Value, json};
use zlink::tokio::unix::Connection;

const SECRET: &[u8] = b"root:only:secret\n";

async fn connect(d: &Daemon) -> Connection {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

/// A root-only file outside the log directory, the target of the plants.
fn secret(d: &Daemon) -> PathBuf {
    let path = d.dir.path().join("secret");
    fs::write(&path, SECRET).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn io_error(result: Result<Value, ManagerError>) -> String {
    match result {
        Err(ManagerError::IoError { message }) => message,
        other => panic!("expected IoError, got {other:?}"),
    }
}

/// ReadLog from the oldest byte to the end.
async fn read_all(conn: &mut Connection, name: &str) -> Result<Vec<u8>, ManagerError> {
    let mut out = Vec::new();
    let mut position = Value::Null;
    loop {
        let r = call(
            conn,
            "ReadLog",
            json!({"name": name, "position": position, "maxBytes": 65536}),
        )
        .await?;
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .unwrap(),
        );
        if r["eof"] == true {
            return Ok(out);
        }
        position = r["position"].clone();
    }
}

/// The daemon is alive and another log works end to end.
async fn still_serving(d: &mut Daemon, conn: &mut Connection) {
    d.assert_alive();
    call(
        conn,
        "AppendLog",
        json!({"name": "other", "message": "fine"}),
    )
    .await
    .unwrap();
    assert_eq!(read_all(conn, "other").await.unwrap(), b"fine\n");
}

#[tokio::test]
async fn append_log_never_writes_through_a_symlink() {
    let mut d = Daemon::start("");
    let target = secret(&d);
    symlink(&target, d.log_path("vm")).unwrap();
    let mut conn = connect(&d).await;
    let result = call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "x"}),
    )
    .await;
    assert_eq!(fs::read(&target).unwrap(), SECRET);
    let message = io_error(result);
    assert!(message.contains("vm.log"), "{message}");
    assert!(message.contains("symbolic link"), "{message}");
    assert!(fs::symlink_metadata(d.log_path("vm")).unwrap().is_symlink());
    still_serving(&mut d, &mut conn).await;
}

#[tokio::test]
async fn open_pipe_never_truncates_through_a_symlink() {
    let mut d = Daemon::start("");
    let target = secret(&d);
    symlink(&target, d.log_path("vm")).unwrap();
    let mut conn = connect(&d).await;
    let result = call(
        &mut conn,
        "OpenPipe",
        json!({"name": "vm", "truncate": true}),
    )
    .await;
    assert_eq!(fs::read(&target).unwrap(), SECRET);
    let message = io_error(result);
    assert!(message.contains("symbolic link"), "{message}");
    // A refused open registers nothing.
    let logs = call(&mut conn, "ListLogs", json!({})).await.unwrap();
    assert_eq!(logs["logs"], json!([]));
    still_serving(&mut d, &mut conn).await;
}

#[tokio::test]
async fn rotate_without_backups_never_truncates_through_a_symlink() {
    let mut d = Daemon::start("");
    let target = secret(&d);
    symlink(&target, d.log_path("vm")).unwrap();
    let mut conn = connect(&d).await;
    let opened = call(
        &mut conn,
        "OpenPipe",
        json!({"name": "vm", "maxBackups": 0}),
    )
    .await;
    let rotated = call(&mut conn, "Rotate", json!({"name": "vm"})).await;
    assert_eq!(fs::read(&target).unwrap(), SECRET);
    io_error(opened);
    assert!(rotated.is_err(), "{rotated:?}");
    still_serving(&mut d, &mut conn).await;
}

#[tokio::test]
async fn rotate_never_truncates_through_a_planted_temp_file() {
    let mut d = Daemon::start("");
    let mut conn = connect(&d).await;
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "one"}),
    )
    .await
    .unwrap();
    let target = secret(&d);
    let temp = d.log_dir().join(".vm.log.next");
    symlink(&target, &temp).unwrap();
    // The temporary name is ours: what sits there is removed, not followed.
    call(&mut conn, "Rotate", json!({"name": "vm"}))
        .await
        .unwrap();
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "two"}),
    )
    .await
    .unwrap();
    assert_eq!(fs::read(&target).unwrap(), SECRET);
    let current = fs::symlink_metadata(d.log_path("vm")).unwrap();
    assert!(current.is_file(), "{current:?}");
    assert_eq!(fs::read(d.log_path("vm")).unwrap(), b"two\n");
    assert!(fs::symlink_metadata(&temp).is_err());
    assert_eq!(read_all(&mut conn, "vm").await.unwrap(), b"one\ntwo\n");
    still_serving(&mut d, &mut conn).await;
}

#[tokio::test]
async fn read_log_never_reads_through_a_symlinked_backup() {
    let mut d = Daemon::start("");
    let mut conn = connect(&d).await;
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "one"}),
    )
    .await
    .unwrap();
    call(&mut conn, "Rotate", json!({"name": "vm"}))
        .await
        .unwrap();
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "two"}),
    )
    .await
    .unwrap();
    let target = secret(&d);
    symlink(&target, d.log_dir().join("vm.log.1")).unwrap();
    // Skipped: it is not a file of ours, and the rest of the log is.
    let read = read_all(&mut conn, "vm").await;
    assert_eq!(fs::read(&target).unwrap(), SECRET);
    assert_eq!(read.unwrap(), b"one\ntwo\n");
    assert!(d.stderr().contains("vm.log.1"), "the skip is logged");
    still_serving(&mut d, &mut conn).await;
}

#[tokio::test]
async fn read_log_skips_a_directory_planted_as_a_backup() {
    let mut d = Daemon::start("");
    let mut conn = connect(&d).await;
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "one"}),
    )
    .await
    .unwrap();
    call(&mut conn, "Rotate", json!({"name": "vm"}))
        .await
        .unwrap();
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm", "message": "two"}),
    )
    .await
    .unwrap();
    let planted = d.log_dir().join("vm.log.2");
    fs::create_dir(&planted).unwrap();
    fs::write(planted.join("inside"), SECRET).unwrap();
    assert_eq!(read_all(&mut conn, "vm").await.unwrap(), b"one\ntwo\n");
    assert_eq!(fs::read(planted.join("inside")).unwrap(), SECRET);
    still_serving(&mut d, &mut conn).await;
}
