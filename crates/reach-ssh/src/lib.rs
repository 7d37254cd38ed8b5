//! The SSH backend of reach.
//!
//! [`SshBackend`] connects with russh (ring crypto, no C dependencies), reads the user's
//! OpenSSH client configuration ([`config`]), reaches the server directly or through
//! `ProxyJump` hosts or a `ProxyCommand`, checks every host key against the user's
//! `known_hosts` file and the system's (`/etc/ssh/ssh_known_hosts`) with OpenSSH's rules
//! ([`known_hosts`]) and authenticates in `ssh`'s order (see [`SshOptions`]). One
//! connection carries many sessions, at most [`SshOptions::max_sessions`] at once (more
//! wait), plus one SFTP session for [`Backend::fs`].
//!
//! Safe defaults: an unknown host key is refused (with its fingerprint and the option that
//! accepts it), a changed or revoked one always is, and a missing known_hosts file is an
//! error unless accept-new is set. Passwords, passphrases and key text are held in
//! [`zeroize::Zeroizing`] buffers and never logged; private keys are zeroized when dropped.
#![deny(missing_docs)]

mod algorithms;
mod auth;
pub mod config;
mod helper;
mod hop;
mod host_key;
pub mod known_hosts;
mod options;
mod platform;
mod process;
mod proxy;
mod sftp;
mod tree;
mod tunnel;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reach_core::{
    Backend, BackendKind, Capabilities, Capability, Destination, Error, ErrorKind, ExecSpec,
    FileSystem, Platform, Process, ProcessExt, Result, Subject,
};
use russh::client;
use russh::keys::PublicKey;

use config::SshConfig;

pub use helper::AgentHelper;
pub use process::{signal_from_russh, signal_to_russh, SshProcess};
pub use sftp::SftpFs;
/// The zeroizing buffer type that secrets in [`SshOptions`] are held in.
pub use zeroize;

/// In-flight sessions per connection unless [`SshOptions::max_sessions`] says otherwise: below
/// OpenSSH's default `MaxSessions` of 10, leaving room for the SFTP session.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// What the server may send on one channel before its reader takes it: 16 MiB, enough to
/// keep a 1 GiB transfer on loopback from waiting for window adjustments.
const WINDOW: u32 = 16 * 1024 * 1024;

pub use options::{Prompt, SshOptions};

use hop::{resolve_hop, split_jump, Hop};
use host_key::{HostKeyCheck, KnownHosts};
use platform::{parse_uname, parse_windows};

type Handle = client::Handle<HostKeyCheck>;

/// One authenticated connection and what is shared over it.
struct Conn {
    handle: Arc<Handle>,
    /// Permits for sessions; a process holds one until its channel closes.
    sessions: Arc<tokio::sync::Semaphore>,
    /// The SFTP session, opened on first use.
    sftp: tokio::sync::OnceCell<Arc<SftpFs>>,
    /// The reach agent on the server, started on first use, or why it could not be.
    helper: tokio::sync::OnceCell<std::result::Result<Arc<reach_agent_client::AgentConn>, String>>,
    /// Jump-host connections the handle's transport runs through.
    _carriers: Vec<Arc<Handle>>,
}

/// One SSH server.
pub struct SshBackend {
    destination: Destination,
    options: SshOptions,
    /// The server, resolved through the config.
    target: Hop,
    /// Jump hosts to pass through, in order.
    jumps: Vec<Hop>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    last_error: Mutex<Option<Error>>,
}

impl SshBackend {
    /// A backend for `destination` (`ssh://[user@]host[:port]`, or the bare form); reads
    /// the client configuration now, connects on first use.
    pub fn new(destination: Destination, options: SshOptions) -> Result<Self> {
        if destination.host().is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{destination}` names no host"),
            ));
        }
        let config = if options.no_config {
            SshConfig::default()
        } else if let Some(path) = &options.config_file {
            SshConfig::load(path)?
        } else {
            SshConfig::load_default()?
        }
        .with_options(&options.config_options)?;
        let (mut target, config_jumps) = resolve_hop(
            destination.host(),
            destination.user(),
            destination.port(),
            &options,
            &config,
        )?;
        // `-J` on the command line comes before anything the config says.
        if options.proxy_jump.is_some() {
            target.proxy_command = None;
        }
        let jump_specs = options.proxy_jump.clone().unwrap_or(config_jumps);
        let mut jumps = Vec::new();
        for spec in &jump_specs {
            let (user, host, port) = split_jump(spec)?;
            let no_overrides = SshOptions {
                port: None,
                user: None,
                ..options.clone()
            };
            jumps.push(resolve_hop(&host, user.as_deref(), port, &no_overrides, &config)?.0);
        }
        Ok(SshBackend {
            target,
            jumps,
            destination,
            options,
            conn: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
        })
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
        let limit = self.target.connect_timeout;
        // Every event of the connection's making is told within its span.
        let span = tracing::info_span!("ssh", to = %self.addr());
        let opening = tracing::Instrument::instrument(self.open(), span);
        let (handle, carriers) = match tokio::time::timeout(limit, opening).await {
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
            _carriers: carriers,
            sessions: Arc::new(tokio::sync::Semaphore::new(
                self.options.max_sessions.max(1),
            )),
            sftp: tokio::sync::OnceCell::new(),
            helper: tokio::sync::OnceCell::new(),
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The SFTP file system of the live connection, starting it on first use.
    async fn sftp(&self) -> Result<Arc<SftpFs>> {
        let conn = self.conn().await?;
        let addr = self.addr();
        let limit = self.target.connect_timeout;
        let start = async {
            let channel = process::open_session(&conn.handle).await.map_err(|e| {
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
            let exec = tree::RemoteExec {
                handle: conn.handle.clone(),
                sessions: conn.sessions.clone(),
                refused: Arc::default(),
            };
            SftpFs::start(channel.into_stream(), addr.clone(), Some(exec))
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

    /// Connects through the jump hosts (if any) to the target; returns the target's
    /// handle and the jump connections that carry it.
    async fn open(&self) -> Result<(Handle, Vec<Arc<Handle>>)> {
        let mut carriers: Vec<Arc<Handle>> = Vec::new();
        let hops: Vec<&Hop> = self.jumps.iter().chain([&self.target]).collect();
        for (i, hop) in hops.iter().enumerate() {
            let handle = match carriers.last() {
                None if hop.proxy_command.is_some() => {
                    let command = hop.proxy_command.as_deref().unwrap_or_default();
                    tracing::info!(
                        "connecting to {} through ProxyCommand `{command}`",
                        hop.addr()
                    );
                    let stream = proxy::ProxyStream::start(command, &hop.addr())?;
                    self.handshake(hop, stream).await.map_err(|e| {
                        if matches!(e.kind(), ErrorKind::Protocol) {
                            Error::new(
                                ErrorKind::Unreachable,
                                format!(
                                    "{} (through the ProxyCommand `{command}`, which may have \
                                     failed: see its messages above)",
                                    e.message()
                                ),
                            )
                        } else {
                            e
                        }
                    })?
                }
                None => {
                    tracing::info!("connecting to {} over TCP", hop.addr());
                    let stream = tokio::net::TcpStream::connect((hop.host.as_str(), hop.port))
                        .await
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Unreachable,
                                format!(
                                    "cannot reach `{}`: {e} (is an SSH server listening there?)",
                                    hop.addr()
                                ),
                            )
                            .with_source(e)
                        })?;
                    let _ = stream.set_nodelay(true);
                    if let Ok(peer) = stream.peer_addr() {
                        tracing::debug!("TCP connection to {peer} open");
                    }
                    self.handshake(hop, stream).await?
                }
                Some(via) => {
                    tracing::info!(
                        "connecting to {} through jump host `{}`",
                        hop.addr(),
                        hops[i - 1].alias
                    );
                    let channel = via
                        .channel_open_direct_tcpip(
                            hop.host.clone(),
                            u32::from(hop.port),
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Unreachable,
                                format!(
                                    "jump host `{}` could not reach `{}`: {e}",
                                    hops[i - 1].alias,
                                    hop.addr()
                                ),
                            )
                        })?;
                    self.handshake(hop, channel.into_stream()).await?
                }
            };
            if i + 1 == hops.len() {
                return Ok((handle, carriers));
            }
            carriers.push(Arc::new(handle));
        }
        Err(Error::new(ErrorKind::InvalidInput, "no host to connect to"))
    }

    /// The SSH handshake, host key check and authentication with one hop over `stream`.
    async fn handshake<S>(&self, hop: &Hop, stream: S) -> Result<Handle>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The name host keys are filed under, and the authorities trusted for it: when there
        // are any, the server is asked for a host certificate, as `ssh` asks.
        let (key_host, key_port) = match &hop.host_key_alias {
            Some(alias) => (alias.clone(), 22),
            None => (hop.host.clone(), hop.port),
        };
        let known = KnownHosts::read(&hop.known_hosts, &hop.global_known_hosts);
        let authorities: Vec<PublicKey> = known
            .texts()
            .flat_map(|(_, text)| known_hosts::authorities(text, &key_host, key_port))
            .filter_map(|(algorithm, key)| {
                PublicKey::from_openssh(&format!("{algorithm} {key}")).ok()
            })
            .collect();
        let config = Arc::new(client::Config {
            keepalive_interval: hop.keepalive,
            keepalive_max: hop.keepalive_max,
            nodelay: true,
            window_size: WINDOW,
            maximum_packet_size: 65535,
            // The window, not this queue, bounds what a channel holds: the patched russh
            // (vendor/russh) reopens a window only as its data is read. Room for a full
            // window in pieces of 16 bytes, so that the connection loop, which waits for
            // room, never waits for a reader who is behind.
            channel_buffer_size: (WINDOW / 16) as usize,
            preferred: hop.algorithms.preferred(!authorities.is_empty()),
            ..Default::default()
        });
        tracing::trace!("offering algorithms: {:?}", config.preferred);
        let rejection = Arc::new(Mutex::new(None));
        let checker = HostKeyCheck {
            // An alias is the known_hosts name as it stands, as `ssh` uses it (port 22 is
            // the one that adds no `[...]:port`).
            host: key_host,
            port: key_port,
            authorities,
            known,
            forward_to: hop.forward_agent.clone(),
            accept_new: hop.accept_new,
            rejection: rejection.clone(),
        };
        let mut handle = match client::connect_stream(config, stream, checker).await {
            Ok(handle) => handle,
            Err(e) => {
                let refused = rejection.lock().ok().and_then(|mut r| r.take());
                return Err(refused.unwrap_or_else(|| {
                    let advice = match &e {
                        russh::Error::NoCommonAlgo { kind, theirs, .. } => {
                            format!("; {}", algorithms::advice(kind, theirs))
                        }
                        _ => String::new(),
                    };
                    Error::new(
                        ErrorKind::Protocol,
                        format!("SSH handshake with `{}` failed: {e}{advice}", hop.addr()),
                    )
                }));
            }
        };
        tracing::debug!(
            "SSH handshake with {} done, authenticating as `{}`",
            hop.addr(),
            hop.user
        );
        auth::authenticate(&mut handle, hop, &self.options).await?;
        Ok(handle)
    }
}

impl SshBackend {
    /// The reach agent on the server, when commands are to go through it: started on first
    /// use; `None` for plain SSH (never asked for, or not possible and only `auto`).
    async fn helper(&self, conn: &Conn) -> Result<Option<Arc<reach_agent_client::AgentConn>>> {
        let mode = self.options.agent_helper;
        if mode == AgentHelper::Never {
            return Ok(None);
        }
        let started = conn
            .helper
            .get_or_init(|| async {
                let sftp = self.sftp().await.map_err(|e| e.to_string())?;
                let start = helper::start(
                    conn.handle.clone(),
                    sftp,
                    self.addr(),
                    self.options.agent_helper_dir.clone(),
                );
                let limit = self.target.connect_timeout.max(Duration::from_secs(15));
                let started = tokio::time::timeout(limit, start)
                    .await
                    .unwrap_or_else(|_| Err(format!("the agent did not start within {limit:?}")));
                match &started {
                    Ok(_) => tracing::debug!(to = %self.addr(), "commands run through the agent"),
                    Err(why) => tracing::info!(to = %self.addr(), "no agent on the server: {why}"),
                }
                started
            })
            .await;
        match started {
            Ok(agent) => match agent.lost() {
                None => Ok(Some(agent.clone())),
                Some(why) => Err(Error::new(ErrorKind::SessionDropped, why)),
            },
            Err(why) if mode == AgentHelper::Always => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the reach agent cannot run on `{}`: {why} (--ssh-agent-helper=auto or \
                     never runs commands over plain SSH)",
                    self.addr()
                ),
            )),
            Err(_) => Ok(None),
        }
    }

    /// Whether commands on the live connection go through the reach agent: `None` before it
    /// was tried (always so under `never`), else `Ok` or why it could not start (what `auto`
    /// fell back for).
    pub async fn agent_helper_status(&self) -> Option<std::result::Result<(), String>> {
        let conn = self.conn.lock().await.clone()?;
        conn.helper
            .get()
            .map(|started| started.as_ref().map(drop).map_err(Clone::clone))
    }

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
            )
            .with_subject(Subject::WorkingDirectory)),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "working directory `{dir}` does not exist on `{}`",
                    self.addr()
                ),
            )
            .with_subject(Subject::WorkingDirectory)),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for SshBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshBackend")
            .field("destination", &self.destination)
            .field("addr", &self.addr())
            .field("user", &self.target.user)
            .field(
                "jumps",
                &self.jumps.iter().map(Hop::addr).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for SshBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ssh
    }

    /// No `Signals` over plain SSH: the server decides whether a signal request reaches the
    /// command (OpenSSH delivers only some, to the first process, not to what it started).
    /// With the agent helper `always`, commands run through the agent, which signals the
    /// command's process group.
    fn capabilities(&self) -> Capabilities {
        if self.options.agent_helper == AgentHelper::Always {
            // Through the agent, signals reach the command's process group.
            return Capabilities::of(&[
                Capability::Signals,
                Capability::Pty,
                Capability::Tcp,
                Capability::KeepConnection,
            ]);
        }
        Capabilities::of(&[Capability::Pty, Capability::Tcp, Capability::KeepConnection])
    }

    fn destination(&self) -> &Destination {
        &self.destination
    }

    fn addr(&self) -> String {
        self.target.addr()
    }

    fn user(&self) -> String {
        self.target.user.clone()
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        self.target.keepalive
    }

    fn configured_forwards(&self) -> Vec<String> {
        self.target.local_forwards.clone()
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
        // A login shell is the user's own shell, and `ssh -A` forwards on the command's own
        // channel: those stay plain SSH.
        let plain = matches!(spec.command, reach_core::CommandLine::LoginShell)
            || self.target.forward_agent.is_some();
        if !plain {
            if let Some(agent) = self.helper(&conn).await? {
                let target = format!("on `{}`", self.addr());
                let process = reach_agent_client::AgentProcess::start(agent, spec, &target);
                return Ok(Box::new(process.await?));
            }
        }
        if let Some(dir) = &spec.cwd {
            self.check_cwd(dir).await?;
        }
        let permit = conn.sessions.clone().acquire_owned().await.map_err(|_| {
            Error::new(
                ErrorKind::SessionDropped,
                format!("the connection to `{}` was closed", self.addr()),
            )
        })?;
        let limit = self.target.connect_timeout;
        let forward = self.target.forward_agent.is_some();
        let start = SshProcess::start(conn.handle.clone(), spec, self.addr(), permit, forward);
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
        if let Some(platform) = parse_uname(&out.stdout).filter(|_| out.status.success()) {
            return Ok(platform);
        }
        // Windows OpenSSH runs commands with cmd.exe: no uname, but `ver` and
        // %PROCESSOR_ARCHITECTURE% say the same.
        let out = self
            .exec(ExecSpec::shell("ver & echo %PROCESSOR_ARCHITECTURE%"))
            .await?
            .output()
            .await?;
        parse_windows(&out.stdout).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "neither `uname` nor `ver` on `{}` said what it runs on",
                    self.addr()
                ),
            )
        })
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<reach_core::TcpTunnel> {
        let conn = self.conn().await?;
        let limit = self.target.connect_timeout;
        let addr = self.addr();
        let opened = tunnel::open(&conn.handle, &addr, host, port);
        tokio::time::timeout(limit, opened)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "`{}` did not connect to {} within {limit:?}",
                        self.addr(),
                        reach_core::tcp_address(host, port)
                    ),
                ))
            })
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
