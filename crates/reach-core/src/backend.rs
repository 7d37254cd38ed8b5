//! The [`Backend`] trait: one target, however it is reached.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BackendKind, BoxRead, BoxWrite, Capabilities, Destination, Error, ErrorKind, ExecSpec,
    FileSystem, Process, Result,
};

/// What a target runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system, lowercase (`linux`, `macos`, `windows`, `freebsd`).
    pub os: String,
    /// CPU architecture as `uname -m` names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Distribution or flavour and version where known (`debian 12`, `alpine 3.20`).
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(variant) = &self.variant {
            write!(f, " ({variant})")?;
        }
        Ok(())
    }
}

/// A TCP connection that a target opened for the caller ([`Backend::connect_tcp`]).
///
/// Bytes written to `writer` reach the peer; shutting `writer` down sends end-of-stream
/// (the peer reads EOF and may still answer). `reader` ends when the peer closes its side;
/// a connection lost on the way is a read error, never a silent end.
pub struct TcpTunnel {
    /// What the peer sends.
    pub reader: BoxRead,
    /// What goes to the peer.
    pub writer: BoxWrite,
}

impl TcpTunnel {
    /// Carries a connection between `reader`/`writer` (a client) and this tunnel both ways
    /// until both directions have ended, passing each end of stream on (so a peer that
    /// answers after the client finished sending still answers). Returns the bytes carried
    /// to the peer and back; the first error ends both directions.
    pub async fn splice<R, W>(mut self, mut reader: R, mut writer: W) -> std::io::Result<(u64, u64)>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let up = async {
            let n = tokio::io::copy(&mut reader, &mut self.writer).await?;
            self.writer.shutdown().await.map(|()| n)
        };
        let down = async {
            let n = tokio::io::copy(&mut self.reader, &mut writer).await?;
            writer.shutdown().await.map(|()| n)
        };
        tokio::try_join!(up, down)
    }
}

impl fmt::Debug for TcpTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTunnel").finish_non_exhaustive()
    }
}

/// `host:port`, with an IPv6 address in brackets (`[::1]:5432`).
pub fn tcp_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The reach error for a TCP connection to `host:port` that the target `via` could not make.
pub fn tcp_connect_error(host: &str, port: u16, via: &str, err: &std::io::Error) -> Error {
    use std::io::ErrorKind as Io;
    let address = tcp_address(host, port);
    let (kind, hint) = match err.kind() {
        Io::ConnectionRefused => (ErrorKind::Unreachable, " (is anything listening there?)"),
        Io::PermissionDenied => (ErrorKind::PermissionDenied, ""),
        Io::TimedOut => (ErrorKind::Timeout, ""),
        _ => (ErrorKind::Unreachable, ""),
    };
    Error::new(
        kind,
        format!("{via} could not connect to {address}: {err}{hint}"),
    )
}

/// One target: the local host, an SSH server, a container, ...
///
/// Object safe and shared as `Arc<dyn Backend>`. A backend connects lazily: [`Backend::exec`]
/// and [`Backend::fs`] connect first if needed, and [`Backend::connect`] is idempotent. One
/// connection carries many processes at once.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// What this backend's commands and connection can do ([`crate::Capability::Signals`],
    /// `Pty`, `Tcp`, `Agent`, `KeepConnection`); its files say theirs through
    /// [`FileSystem::capabilities`]. Exact once connected; before, what a connection is
    /// expected to offer.
    fn capabilities(&self) -> Capabilities;
    /// The destination this backend was made for.
    fn destination(&self) -> &Destination;
    /// The address actually used (for example `127.0.0.1:22` after config and DNS).
    fn addr(&self) -> String;
    /// The user commands run as.
    fn user(&self) -> String;
    /// Connects (and authenticates) if not connected; does nothing if connected.
    async fn connect(&self) -> Result<()>;
    /// Whether a connection is up (`local` always is).
    fn is_connected(&self) -> bool;
    /// The last transport error, if the connection broke.
    fn last_error(&self) -> Option<Error>;
    /// How often [`Backend::send_keepalive`] should be called, if the transport needs it.
    fn keepalive_interval(&self) -> Option<Duration> {
        None
    }
    /// Sends one keepalive; an error means the connection is dead.
    async fn send_keepalive(&self) -> Result<()> {
        Ok(())
    }
    /// Checks end to end that the target answers (runs a trivial operation).
    async fn health_check(&self) -> Result<()>;
    /// Starts a command.
    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>>;
    /// The target's files.
    async fn fs(&self) -> Result<Arc<dyn FileSystem>>;
    /// What the target runs on.
    async fn platform(&self) -> Result<Platform>;
    /// Closes the connection; running processes are torn down.
    async fn close(&self) -> Result<()>;
    /// The forwards the target's own configuration asks for, as `-L` specs
    /// (`[bind:]port:host:hostport`): `LocalForward` in the SSH config. None by default.
    fn configured_forwards(&self) -> Vec<String> {
        Vec::new()
    }
    /// Opens a TCP connection from the target to `host:port`, as `ssh -L` does: `host` is
    /// resolved and connected on the target, so `127.0.0.1` is the target's own loopback (a
    /// database that listens only there, a container's port that is not published).
    ///
    /// A port nobody listens on is [`ErrorKind::Unreachable`], a target that forbids it
    /// [`ErrorKind::PermissionDenied`]; backends that cannot do it say
    /// [`ErrorKind::Unsupported`] (the default).
    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpTunnel> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "`{}` ({} backend) cannot open TCP connections (to {})",
                self.destination(),
                self.kind(),
                tcp_address(host, port)
            ),
        ))
    }
}
