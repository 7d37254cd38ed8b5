//! Agent forwarding (`ssh -A`): a Unix socket in a private directory, named to the session
//! in `SSH_AUTH_SOCK`; every connection to it opens an `auth-agent@openssh.com` channel back
//! to the client. Removed when the session ends.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use reach_core::{Error, Result};
use russh::server::Handle;
use tokio::net::UnixListener;

use crate::log::Level;

/// A forwarded agent socket, alive while this value is.
#[derive(Debug)]
pub struct Forward {
    dir: PathBuf,
    socket: String,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// The socket's path, for `SSH_AUTH_SOCK`.
    pub fn socket(&self) -> &str {
        &self.socket
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens the socket for one session of connection `conn`.
pub async fn forward(handle: Handle, conn: &str) -> Result<Forward> {
    let mut raw = [0u8; 8];
    crate::auth::getrandom(&mut raw)?;
    let name: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("reach-agent-{name}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("creating `{}`", dir.display()), e))?;
    let path = dir.join("agent.sock");
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::io(format!("listening on `{}`", path.display()), e));
        }
    };
    let conn = conn.to_owned();
    let task = tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let handle = handle.clone();
            let conn = conn.clone();
            tokio::spawn(async move {
                match handle.channel_open_agent().await {
                    Ok(channel) => {
                        let mut remote = channel.into_stream();
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    }
                    Err(e) => crate::log!(Level::Warn, &conn, "agent.channel_failed", error = e),
                }
            });
        }
    });
    Ok(Forward {
        socket: path.to_string_lossy().into_owned(),
        dir,
        task,
    })
}
