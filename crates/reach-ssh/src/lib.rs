//! The SSH backend of reach (work in progress: not yet registered in the facade).
//!
//! [`SshBackend`] connects with russh (ring crypto, no C dependencies), checks the server's
//! host key against a `known_hosts` file with OpenSSH's rules ([`known_hosts`]), and
//! authenticates with private key files. One connection carries many sessions.
//!
//! Safe defaults: an unknown host key is refused (with its fingerprint and the option that
//! accepts it), a changed or revoked one always is, and a missing known_hosts file is an
//! error unless accept-new is set. Private keys are zeroized when dropped (by `ssh-key`).
//!
//! Not yet here (see the open issue): SFTP ([`Backend::fs`] returns `Unsupported`),
//! ssh-agent and password auth, `~/.ssh/config`, ProxyJump, the session cap, and killing
//! the remote process tree on timeout.
#![deny(missing_docs)]

pub mod known_hosts;
mod process;
mod sftp;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reach_core::{
    Backend, Destination, Error, ErrorKind, ExecSpec, FileSystem, Platform, Process, ProcessExt,
    Result,
};
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};

pub use process::SshProcess;
pub use sftp::SftpFs;

/// In-flight sessions per connection unless [`SshOptions::max_sessions`] says otherwise: below
/// OpenSSH's default `MaxSessions` of 10, leaving room for the SFTP session.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// How to connect, beyond what the destination says.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The private key to offer (else `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`).
    pub identity: Option<PathBuf>,
    /// The known_hosts file (else `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing it (never a changed one).
    pub accept_new_host_key: bool,
    /// Limit on TCP connect plus the SSH handshake and authentication, and on opening each
    /// session once connected.
    pub connect_timeout: Duration,
    /// Sessions (commands) open at once on the connection; more wait for a free slot.
    pub max_sessions: usize,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: None,
            known_hosts: None,
            accept_new_host_key: false,
            connect_timeout: Duration::from_secs(15),
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

type Handle = client::Handle<HostKeyCheck>;

/// One authenticated connection and what is shared over it.
struct Conn {
    handle: Arc<Handle>,
    /// Permits for sessions; a process holds one until its channel closes.
    sessions: Arc<tokio::sync::Semaphore>,
    /// The SFTP session, opened on first use.
    sftp: tokio::sync::OnceCell<Arc<SftpFs>>,
}

/// One SSH server.
pub struct SshBackend {
    destination: Destination,
    options: SshOptions,
    host: String,
    port: u16,
    user: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    last_error: Mutex<Option<Error>>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl SshBackend {
    /// A backend for `destination` (`ssh://[user@]host[:port]`); connects on first use.
    pub fn new(destination: Destination, options: SshOptions) -> Result<Self> {
        if destination.host().is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{destination}` names no host"),
            ));
        }
        let user = match destination.user() {
            Some(user) => user.to_owned(),
            None => std::env::var("USER").unwrap_or_else(|_| "root".to_owned()),
        };
        Ok(SshBackend {
            host: destination.host().to_owned(),
            port: destination.port().unwrap_or(22),
            user,
            destination,
            options,
            conn: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    fn known_hosts_path(&self) -> PathBuf {
        self.options
            .known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh").join("known_hosts"))
    }

    fn remember(&self, err: Error) -> Error {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(err.clone());
        }
        err
    }

    /// The live connection, connecting first if needed.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.handle.is_closed() {
                return Ok(conn.clone());
            }
        }
        let limit = self.options.connect_timeout;
        let handle = match tokio::time::timeout(limit, self.open()).await {
            Ok(result) => result.map_err(|e| self.remember(e))?,
            Err(_) => {
                return Err(self.remember(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting to `{}` took longer than {limit:?}: check the host and port, \
                         or raise the connect timeout",
                        self.addr()
                    ),
                )))
            }
        };
        let conn = Arc::new(Conn {
            handle: Arc::new(handle),
            sessions: Arc::new(tokio::sync::Semaphore::new(
                self.options.max_sessions.max(1),
            )),
            sftp: tokio::sync::OnceCell::new(),
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The SFTP file system of the live connection, starting it on first use.
    async fn sftp(&self) -> Result<Arc<SftpFs>> {
        let conn = self.conn().await?;
        let addr = self.addr();
        let limit = self.options.connect_timeout;
        let start = async {
            let channel = conn.handle.channel_open_session().await.map_err(|e| {
                Error::new(
                    ErrorKind::SessionDropped,
                    format!("opening an SFTP session on `{addr}` failed: {e}"),
                )
            })?;
            channel.request_subsystem(true, "sftp").await.map_err(|e| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("`{addr}` refused the SFTP subsystem: {e}"),
                )
            })?;
            SftpFs::start(channel.into_stream(), addr.clone())
                .await
                .map(Arc::new)
        };
        conn.sftp
            .get_or_try_init(|| async {
                tokio::time::timeout(limit, start)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!("starting SFTP on `{addr}` took longer than {limit:?}"),
                        ))
                    })
            })
            .await
            .cloned()
    }

    async fn open(&self) -> Result<Handle> {
        let addr = self.addr();
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unreachable,
                    format!("cannot reach `{addr}`: {e} (is an SSH server listening there?)"),
                )
                .with_source(e)
            })?;
        let _ = stream.set_nodelay(true);
        let config = Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            window_size: 8 * 1024 * 1024,
            ..Default::default()
        });
        let rejection = Arc::new(Mutex::new(None));
        let checker = HostKeyCheck {
            host: self.host.clone(),
            port: self.port,
            path: self.known_hosts_path(),
            accept_new: self.options.accept_new_host_key,
            rejection: rejection.clone(),
        };
        let mut handle = match client::connect_stream(config, stream, checker).await {
            Ok(handle) => handle,
            Err(e) => {
                let refused = rejection.lock().ok().and_then(|mut r| r.take());
                return Err(refused.unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("SSH handshake with `{addr}` failed: {e}"),
                    )
                }));
            }
        };
        self.authenticate(&mut handle).await?;
        Ok(handle)
    }

    async fn authenticate(&self, handle: &mut Handle) -> Result<()> {
        let candidates: Vec<PathBuf> = match &self.options.identity {
            Some(path) => vec![path.clone()],
            None => ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|name| home().join(".ssh").join(name))
                .filter(|p| p.exists())
                .collect(),
        };
        if candidates.is_empty() {
            return Err(Error::new(
                ErrorKind::AuthFailed,
                format!(
                    "no private key to offer to `{}`: pass -i FILE or create ~/.ssh/id_ed25519",
                    self.addr()
                ),
            ));
        }
        let mut problems = Vec::new();
        for path in &candidates {
            let key = match russh::keys::load_secret_key(path, None) {
                Ok(key) => key,
                Err(e) => {
                    problems.push(format!("`{}` could not be loaded: {e}", path.display()));
                    continue;
                }
            };
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            let offer = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            match handle.authenticate_publickey(&self.user, offer).await {
                Ok(result) if result.success() => return Ok(()),
                Ok(_) => problems.push(format!("`{}` was refused", path.display())),
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::SessionDropped,
                        format!(
                            "the connection to `{}` broke during authentication: {e}",
                            self.addr()
                        ),
                    ))
                }
            }
        }
        Err(Error::new(
            ErrorKind::AuthFailed,
            format!(
                "`{}@{}` did not accept any key ({}): check the server's authorized_keys or pass \
                 -i FILE",
                self.user,
                self.addr(),
                problems.join("; ")
            ),
        ))
    }
}

impl SshBackend {
    /// A missing working directory is `NotFound` before anything runs, as on every backend.
    async fn check_cwd(&self, dir: &str) -> Result<()> {
        let fs = self.sftp().await?;
        match reach_core::FileSystem::metadata(&*fs, dir).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "working directory `{dir}` on `{}` is not a directory",
                    self.addr()
                ),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "working directory `{dir}` does not exist on `{}`",
                    self.addr()
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for SshBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshBackend")
            .field("destination", &self.destination)
            .field("addr", &self.addr())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The russh client handler: checks the host key against known_hosts.
#[derive(Debug)]
struct HostKeyCheck {
    host: String,
    port: u16,
    path: PathBuf,
    accept_new: bool,
    rejection: Arc<Mutex<Option<Error>>>,
}

impl HostKeyCheck {
    fn verdict(&self, key: &PublicKey) -> Result<()> {
        let openssh = key
            .to_openssh()
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("unreadable host key: {e}")))?;
        let mut parts = openssh.split_whitespace();
        let (algorithm, blob) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let path = self.path.display();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.accept_new => String::new(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::HostKeyRejected,
                    format!(
                        "known_hosts file `{path}` does not exist, so the host key of `{name}` \
                         ({algorithm} {fingerprint}) cannot be checked: create the file, or \
                         pass --accept-new-host-key to record this key"
                    ),
                ))
            }
            Err(e) => return Err(Error::io(format!("read known_hosts file `{path}`"), e)),
        };
        let reject = |why: String| Err(Error::new(ErrorKind::HostKeyRejected, why));
        match known_hosts::check(&text, &self.host, self.port, algorithm, blob) {
            known_hosts::Verdict::Known => Ok(()),
            known_hosts::Verdict::Revoked(line) => reject(format!(
                "the host key of `{name}` ({algorithm} {fingerprint}) is marked @revoked in \
                 `{path}` line {line}: refusing to connect"
            )),
            known_hosts::Verdict::Changed(line) => reject(format!(
                "the host key of `{name}` CHANGED: it is now {algorithm} {fingerprint}, but \
                 `{path}` line {line} records another. This may be an attack. If the server was \
                 really re-keyed, remove that line and connect again"
            )),
            known_hosts::Verdict::Unknown if self.accept_new => {
                use std::io::Write;
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::io(format!("create `{}`", dir.display()), e))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| Error::io(format!("open `{path}`"), e))?;
                file.write_all(
                    known_hosts::entry(&self.host, self.port, algorithm, blob).as_bytes(),
                )
                .map_err(|e| Error::io(format!("write `{path}`"), e))
            }
            known_hosts::Verdict::Unknown => reject(format!(
                "the host key of `{name}` is unknown ({algorithm} {fingerprint}, not in \
                 `{path}`): check the fingerprint with the server's administrator, then pass \
                 --accept-new-host-key to record it"
            )),
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let verdict = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Err(Error::new(
                ErrorKind::HostKeyRejected,
                format!(
                    "`{}` offered a host certificate; certificates are not supported yet",
                    self.host
                ),
            )),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(err) => {
                if let Ok(mut slot) = self.rejection.lock() {
                    *slot = Some(err);
                }
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl Backend for SshBackend {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn user(&self) -> String {
        self.user.clone()
    }

    async fn connect(&self) -> Result<()> {
        self.conn().await.map(drop)
    }

    fn is_connected(&self) -> bool {
        self.conn
            .try_lock()
            .map(|slot| slot.as_ref().is_some_and(|c| !c.handle.is_closed()))
            .unwrap_or(true)
    }

    fn last_error(&self) -> Option<Error> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    async fn health_check(&self) -> Result<()> {
        let out = self.exec(ExecSpec::argv(["true"])).await?.output().await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Protocol,
                format!("`true` on `{}` ended with {}", self.addr(), out.status),
            ))
        }
    }

    async fn exec(&self, spec: ExecSpec) -> Result<Box<dyn Process>> {
        let conn = self.conn().await?;
        if let Some(dir) = &spec.cwd {
            self.check_cwd(dir).await?;
        }
        let permit = conn.sessions.clone().acquire_owned().await.map_err(|_| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("the connection to `{}` was closed", self.addr()),
            )
        })?;
        let limit = self.options.connect_timeout;
        let start = SshProcess::start(conn.handle.clone(), spec, self.addr(), permit);
        match tokio::time::timeout(limit, start).await {
            Ok(process) => Ok(Box::new(process?)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "`{}` did not open a session within {limit:?} (is the server overloaded?)",
                    self.addr()
                ),
            )),
        }
    }

    async fn fs(&self) -> Result<Arc<dyn FileSystem>> {
        Ok(self.sftp().await?)
    }

    async fn platform(&self) -> Result<Platform> {
        let out = self
            .exec(ExecSpec::shell("uname -s; uname -m"))
            .await?
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(os), Some(arch)) if out.status.success() => Ok(Platform {
                os: os.trim().to_owned(),
                arch: arch.trim().to_owned(),
                variant: None,
            }),
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                format!("`uname` on `{}` did not say what it runs on", self.addr()),
            )),
        }
    }

    async fn close(&self) -> Result<()> {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
        Ok(())
    }
}
