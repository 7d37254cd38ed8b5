//! The local-host backend of reach, and its embedded default.
//!
//! [`LocalBackend`] runs commands on this machine with `tokio::process` and serves files with
//! `tokio::fs`. It owns:
//! - processes in their own process group, so that a signal, a timeout or a dropped
//!   [`reach_core::Process`] reaches everything the command started, not just its first
//!   process;
//! - pseudo-terminal sessions (`openpty`, a new session with the PTY as controlling terminal,
//!   resize through `TIOCSWINSZ`);
//! - platform detection from the build target and `/etc/os-release`.
//!
//! It does not own anything remote; Unix only (Linux and macOS).
#![deny(missing_docs)]

mod fs;
mod process;
mod pty;
pub mod rootfs;
mod write;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use reach_core::{
    tcp_connect_error, Backend, BackendKind, Capabilities, Capability, Destination, Error,
    ExecSpec, FileSystem, Platform, Process, Result, TcpTunnel,
};

pub use fs::LocalFs;
pub use process::LocalProcess;

/// The local host as a [`Backend`].
#[derive(Debug, Clone)]
pub struct LocalBackend {
    destination: Destination,
    created: Instant,
    fs: Arc<LocalFs>,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBackend {
    /// A backend for this machine, running as the current user.
    pub fn new() -> Self {
        LocalBackend {
            destination: Destination::local(),
            created: Instant::now(),
            fs: Arc::new(LocalFs::new()),
        }
    }

    /// How long ago the backend was made.
    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }
}

/// The current user's name, from the password database, then `$USER`, then the numeric id.
pub(crate) fn current_user() -> nix::unistd::User {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user,
        _ => nix::unistd::User {
            name: std::env::var("USER").unwrap_or_else(|_| uid.to_string()),
            passwd: Default::default(),
            uid,
            gid: nix::unistd::getgid(),
            gecos: Default::default(),
            dir: std::env::var_os("HOME")
                .unwrap_or_else(|| "/".into())
                .into(),
            shell: std::env::var_os("SHELL")
                .unwrap_or_else(|| "/bin/sh".into())
                .into(),
        },
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[Capability::Signals, Capability::Pty, Capability::Tcp])
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned())
    }

    fn user(&self) -> String {
        current_user().name
    }

    async fn connect(&self) -> Result<()> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn last_error(&self) -> Option<Error> {
        None
    }

    async fn health_check(&self) -> Result<()> {
        self.fs.metadata("/").await.map(|_| ())
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>> {
        Ok(Box::new(LocalProcess::spawn(spec).await?))
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        Ok(self.fs.clone())
    }

    async fn platform(&self) -> Result<Platform> {
        Ok(Platform {
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            variant: tokio::fs::read_to_string("/etc/os-release")
                .await
                .ok()
                .and_then(|text| os_release_variant(&text)),
        })
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpTunnel> {
        let connect = tokio::net::TcpStream::connect((host, port));
        let stream = match tokio::time::timeout(TCP_CONNECT_LIMIT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(tcp_connect_error(host, port, "this host", &e)),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {TCP_CONNECT_LIMIT:?}"),
                );
                return Err(tcp_connect_error(host, port, "this host", &e));
            }
        };
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Ok(TcpTunnel {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
        })
    }
}

/// How long a TCP connection may take to be made: an address that drops the SYN would
/// otherwise take the kernel's two minutes.
const TCP_CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `ID VERSION_ID` from an os-release file (`debian 12`).
fn os_release_variant(text: &str) -> Option<String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    let id = field("ID")?;
    Some(match field("VERSION_ID") {
        Some(version) => format!("{id} {version}"),
        None => id,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(
            super::os_release_variant(text).as_deref(),
            Some("debian 12")
        );
        assert_eq!(
            super::os_release_variant("ID=arch\n").as_deref(),
            Some("arch")
        );
        assert_eq!(super::os_release_variant("NAME=x\n"), None);
    }
}
