//! `create`, `remove` and `status`: consoles for admins, without varlinkctl.

use clap::ValueEnum;
use guestlogd::api::{ListLogsOutput, Manager as _, ManagerError};
use serde_json::json;
use zlink::tokio::unix::Connection;

use crate::CtlError;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SlowClient {
    Drop,
    Disconnect,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WritersArg {
    All,
    One,
}

impl WritersArg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::One => "one",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The console's name; QEMU connects to RUNDIR/consoles/NAME.guest.
    pub name: String,
    /// Keep no log of the guest's output.
    #[arg(long)]
    pub no_log: bool,
    /// The log's cap in bytes.
    #[arg(long)]
    pub max_size: Option<u64>,
    /// The log's backups.
    #[arg(long)]
    pub max_backups: Option<u32>,
    /// Bytes of the latest output a client gets when it attaches.
    #[arg(long)]
    pub replay_bytes: Option<u64>,
    /// What happens to a client that reads too slowly.
    #[arg(long, value_enum)]
    pub slow_client: Option<SlowClient>,
    /// The sockets' owner, UID or UID:GID (QEMU's user).
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, Option<u32>)>,
    /// The sockets' mode, in octal.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Also listen on NAME.view for read-only watchers.
    #[arg(long)]
    pub viewers: bool,
    /// "one": one client writes at a time (attach --force takes over).
    #[arg(long, value_enum)]
    pub writers: Option<WritersArg>,
    /// Keep the first N bytes after each guest connection in NAME.boot.log.
    #[arg(long)]
    pub boot_bytes: Option<u64>,
}

pub fn parse_owner(s: &str) -> Result<(u32, Option<u32>), String> {
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((number(u)?, Some(number(g)?))),
        None => Ok((number(s)?, None)),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not a mode from 0 to 777 (octal)")),
    }
}

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
    conn.remove_console(name, None)
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
