//! `create`, `remove` and `status`: consoles for admins, without varlinkctl.

use guestlogd::api::{ListLogsOutput, Manager as _, ManagerError};
use serde_json::json;
use zlink::tokio::unix::Connection;

use crate::{
    CtlError,
    cli::{CreateArgs, SlowClient, WritersArg},
};

pub async fn create(conn: &mut Connection, a: CreateArgs) -> Result<(), CtlError> {
    let owner = (a.owner.is_some() || a.mode.is_some()).then(|| {
        json!({
            "uid": a.owner.map(|o| o.0),
            "gid": a.owner.and_then(|o| o.1),
            "mode": a.mode,
        })
    });
    let params = json!({
        "name": a.name,
        "log": (!a.no_log),
        "maxSize": a.max_size,
        "maxBackups": a.max_backups,
        "replayBytes": a.replay_bytes,
        "slowClient": a.slow_client.map(|s| match s {
            SlowClient::Drop => "drop",
            SlowClient::Disconnect => "disconnect",
        }),
        "owner": owner,
        "viewers": a.viewers,
        "writers": a.writers.map(WritersArg::as_str),
        "bootBytes": a.boot_bytes,
    });
    let (reply, _) = crate::call(conn, "CreateConsole", params).await?;
    for (key, what) in [
        ("guestSocket", "guest"),
        ("clientSocket", "client"),
        ("viewSocket", "viewers"),
        ("logPath", "log"),
        ("bootLogPath", "boot log"),
    ] {
        if let Some(v) = reply[key].as_str() {
            println!("{what:<9} {v}");
        }
    }
    Ok(())
}

pub async fn remove(conn: &mut Connection, name: &str) -> Result<(), CtlError> {
    conn.remove_console(name, None, None)
        .await
        .map_err(CtlError::Call)?
        .map_err(CtlError::Refused)
}

pub async fn daemon_status(conn: &mut Connection) -> Result<(), CtlError> {
    let s = conn
        .get_status()
        .await
        .map_err(CtlError::Call)?
        .map_err(CtlError::Refused)?;
    println!("version      {}", s.version);
    println!("pid          {}", s.pid);
    println!("adoptions    {}", s.adoptions);
    println!("stored fds   {}", s.stored_fds);
    println!(
        "fd store     {}",
        if s.fd_store { "systemd" } else { "none" }
    );
    println!("connections  {} open", s.connections.open);
    if let Some(v) = &s.virtlogd {
        println!(
            "virtlogd     took over {} pipes and {} connections",
            v.pipes.len(),
            v.connections
        );
    }
    Ok(())
}

pub fn console_status(all: ListLogsOutput, name: &str) -> Result<(), CtlError> {
    let Some(c) = all.consoles.into_iter().find(|c| c.name == name) else {
        return Err(CtlError::Refused(ManagerError::NoSuchConsole {
            name: name.to_owned(),
        }));
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("name           {}", c.name);
    match &c.domain {
        Some(d) => println!("domain         {} ({})", d.name, d.uuid),
        None => println!("domain         -"),
    }
    println!("guest socket   {}", c.guest_socket);
    println!("client socket  {}", c.client_socket);
    println!("view socket    {}", opt(&c.view_socket));
    println!("log            {}", opt(&c.log_path));
    println!(
        "boot log       {} ({} bytes per boot)",
        opt(&c.boot_log_path),
        c.boot_bytes
    );
    println!(
        "guest          {}",
        if c.guest_connected {
            "connected"
        } else {
            "not connected"
        }
    );
    println!("clients        {}", c.clients);
    println!("viewers        {}", c.viewers);
    match &c.writer {
        Some(w) => println!("writers        {} (uid {} pid {})", c.writers, w.uid, w.pid),
        None => println!("writers        {}", c.writers),
    }
    println!("from guest     {} bytes", c.bytes_from_guest);
    println!("to guest       {} bytes", c.bytes_to_guest);
    println!("dropped        {} bytes", c.bytes_dropped_for_clients);
    Ok(())
}
