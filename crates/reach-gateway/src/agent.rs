//! Agent forwarding (`ssh -A`): a Unix socket named to the session in `SSH_AUTH_SOCK`; every
//! connection to it opens an `auth-agent@openssh.com` channel back to the client. The socket
//! lives in a private directory of its own (local sessions) or in its container's agent
//! directory (a bind mount); it goes when the session ends.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use reach_core::{Error, Result};
use russh::server::Handle;
use tokio::net::UnixListener;

use crate::backends::AgentDir;
use crate::log::Level;

/// A forwarded agent socket, alive while this value is.
#[derive(Debug)]
pub struct Forward {
    seen_as: String,
    task: tokio::task::JoinHandle<()>,
    _spot: Spot,
}

/// Where the socket is: removed on drop (the private directory, or the socket alone).
#[derive(Debug)]
struct Spot {
    remove: PathBuf,
    private_dir: bool,
}

impl Drop for Spot {
    fn drop(&mut self) {
        let _ = if self.private_dir {
            std::fs::remove_dir_all(&self.remove)
        } else {
            std::fs::remove_file(&self.remove)
        };
    }
}

impl Forward {
    /// The socket's path as the session sees it, for `SSH_AUTH_SOCK`.
    pub fn socket(&self) -> &str {
        &self.seen_as
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_name() -> Result<String> {
    let mut raw = [0u8; 8];
    crate::auth::getrandom(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Opens the socket for one session of connection `conn`: in `dir` (a container's agent
/// directory, so anyone in that container may use it), else in a new private directory.
pub async fn forward(handle: Handle, conn: &str, dir: Option<&AgentDir>) -> Result<Forward> {
    let name = random_name()?;
    let (path, spot, seen_as) = match dir {
        Some(dir) => {
            let file = format!("agent.{name}.sock");
            let path = dir.host.join(&file);
            let seen_as = format!("{}/{file}", dir.seen_as);
            let spot = Spot {
                remove: path.clone(),
                private_dir: false,
            };
            (path, spot, seen_as)
        }
        None => {
            let private = std::env::temp_dir().join(format!("reach-agent-{name}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&private)
                .map_err(|e| Error::io(format!("creating `{}`", private.display()), e))?;
            let path = private.join("agent.sock");
            let seen_as = path.to_string_lossy().into_owned();
            let spot = Spot {
                remove: private,
                private_dir: true,
            };
            (path, spot, seen_as)
        }
    };
    let bound = UnixListener::bind(&path).and_then(|l| {
        if !spot.private_dir {
            // The container's user may be anyone; the directory's parent keeps others on
            // this host out.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        }
        Ok(l)
    });
    let listener = bound.map_err(|e| Error::io(format!("listening on `{}`", path.display()), e))?;
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
        seen_as,
        task,
        _spot: spot,
    })
}
