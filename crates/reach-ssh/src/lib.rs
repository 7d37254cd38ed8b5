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
//! [`Zeroizing`] buffers and never logged; private keys are zeroized when dropped.
#![deny(missing_docs)]

mod algorithms;
mod auth;
pub mod config;
pub mod known_hosts;
mod process;
mod proxy;
mod sftp;
mod tree;
mod tunnel;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reach_core::{
    Backend, BackendKind, Capabilities, Capability, Destination, Error, ErrorKind, ExecSpec,
    FileSystem, Platform, Process, ProcessExt, Result, Subject,
};
use russh::client;
use russh::keys::{HashAlg, PublicKey};
use zeroize::Zeroizing;

use algorithms::Algorithms;
use config::SshConfig;

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

/// Asks the person at the terminal for a secret (`prompt` says which); `None` if nobody can
/// answer. The CLI reads from the terminal with echo off.
pub type Prompt = Arc<dyn Fn(&str) -> Option<Zeroizing<String>> + Send + Sync>;

/// How to connect, beyond what the destination says. Unset fields come from the OpenSSH
/// client configuration, then from `ssh`'s defaults.
///
/// Authentication is tried in this order: [`SshOptions::identity`] (`-i`), the ssh-agent
/// (unless `IdentitiesOnly yes`), the config's `IdentityFile`s, the default key files
/// (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`), then a password ([`SshOptions::password`],
/// else [`SshOptions::prompt`]), by the `password` or `keyboard-interactive` method.
#[derive(Clone)]
pub struct SshOptions {
    /// The private key to offer first: a file, or the key text itself (`-----BEGIN ...`).
    pub identity: Option<PathBuf>,
    /// Passphrase for encrypted keys (else [`SshOptions::prompt`] is asked).
    pub passphrase: Option<Zeroizing<String>>,
    /// Password for password authentication (else [`SshOptions::prompt`] is asked).
    pub password: Option<Zeroizing<String>>,
    /// Asks for passphrases and passwords that were not given.
    pub prompt: Option<Prompt>,
    /// Use the ssh-agent.
    pub use_agent: bool,
    /// The agent's socket (else `$SSH_AUTH_SOCK`).
    pub agent_socket: Option<PathBuf>,
    /// Forward the ssh-agent to commands and shells on the target (`ssh -A`); `None` leaves
    /// it to the config's `ForwardAgent` (off by default: whoever is root there can use it).
    pub forward_agent: Option<bool>,
    /// The known_hosts file (else the config's `UserKnownHostsFile`, else
    /// `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing it (never a changed one).
    pub accept_new_host_key: bool,
    /// The client configuration (`-F`); else `~/.ssh/config` if it exists.
    pub config_file: Option<PathBuf>,
    /// Read no client configuration at all (options in `config_options` still apply).
    pub no_config: bool,
    /// Configuration lines given on the command line (`ssh -o`, as `Keyword=value`), which
    /// win over every file's.
    pub config_options: Vec<String>,
    /// Port, unless the destination names one (`-p`).
    pub port: Option<u16>,
    /// User, unless the destination names one (`-l`).
    pub user: Option<String>,
    /// Jump hosts, overriding the config's `ProxyJump` (`-J`).
    pub proxy_jump: Option<Vec<String>>,
    /// Limit on TCP connect plus handshake and authentication, and on opening each session
    /// (else the config's `ConnectTimeout`, else 15 s).
    pub connect_timeout: Option<Duration>,
    /// Keepalive interval (else the config's `ServerAliveInterval`, else 15 s); after
    /// `ServerAliveCountMax` (3) unanswered ones the connection counts as dead.
    pub keepalive_interval: Option<Duration>,
    /// Sessions (commands) open at once on the connection; more wait for a free slot.
    pub max_sessions: usize,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: None,
            passphrase: None,
            password: None,
            prompt: None,
            use_agent: true,
            agent_socket: None,
            forward_agent: None,
            known_hosts: None,
            accept_new_host_key: false,
            config_file: None,
            no_config: false,
            config_options: Vec::new(),
            port: None,
            user: None,
            proxy_jump: None,
            connect_timeout: None,
            keepalive_interval: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<Zeroizing<String>>| s.as_ref().map(|_| "<secret>");
        f.debug_struct("SshOptions")
            .field(
                "identity",
                &self.identity.as_ref().map(|p| {
                    if auth::is_key_text(p) {
                        PathBuf::from("<key text>")
                    } else {
                        p.clone()
                    }
                }),
            )
            .field("passphrase", &secret(&self.passphrase))
            .field("password", &secret(&self.password))
            .field("prompt", &self.prompt.as_ref().map(|_| "<fn>"))
            .field("use_agent", &self.use_agent)
            .field("agent_socket", &self.agent_socket)
            .field("forward_agent", &self.forward_agent)
            .field("known_hosts", &self.known_hosts)
            .field("accept_new_host_key", &self.accept_new_host_key)
            .field("config_file", &self.config_file)
            .field("no_config", &self.no_config)
            .field("config_options", &self.config_options)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("proxy_jump", &self.proxy_jump)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

/// One hop, fully resolved: where to connect and how to log in.
#[derive(Debug, Clone)]
struct Hop {
    /// What the user typed (the config's `Host` name).
    alias: String,
    /// The host to connect to (after `HostName`).
    host: String,
    port: u16,
    user: String,
    identity_files: Vec<PathBuf>,
    identities_only: bool,
    known_hosts: PathBuf,
    /// System-wide known_hosts files, checked after `known_hosts` and never written.
    global_known_hosts: Vec<PathBuf>,
    /// `HostKeyAlias`: the known_hosts name of the host key, used as written.
    host_key_alias: Option<String>,
    /// `IdentityAgent` from the config, as written.
    identity_agent: Option<String>,
    /// `CertificateFile`s from the config.
    certificate_files: Vec<PathBuf>,
    /// The agent socket that sessions forward to the target, when agent forwarding is on.
    forward_agent: Option<PathBuf>,
    accept_new: bool,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    keepalive_max: usize,
    /// The `ProxyCommand` that carries a first hop, tokens expanded.
    proxy_command: Option<String>,
    /// What the handshake offers (`KexAlgorithms`, `HostKeyAlgorithms`, `Ciphers`, `MACs`).
    algorithms: Algorithms,
    /// `LocalForward`s from the config, as `-L` specs.
    local_forwards: Vec<String>,
}

impl Hop {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `[user@]host[:port]` (a ProxyJump entry, or `ssh://...`).
fn split_jump(spec: &str) -> Result<(Option<String>, String, Option<u16>)> {
    let dest = Destination::parse_with_default(spec, "ssh").map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("jump host `{spec}` is not [user@]host[:port]: {e}"),
        )
    })?;
    Ok((
        dest.user().map(str::to_owned),
        dest.host().to_owned(),
        dest.port(),
    ))
}

/// Resolves a host as `ssh` would: explicit values, then the config, then defaults.
fn resolve_hop(
    alias: &str,
    user: Option<&str>,
    port: Option<u16>,
    options: &SshOptions,
    config: &SshConfig,
) -> Result<(Hop, Vec<String>)> {
    let given = user.or(options.user.as_deref());
    let host_config = config.resolve_as(alias, given)?;
    let identity_agent = host_config.identity_agent.clone();
    let user = given
        .map(str::to_owned)
        .or(host_config.user)
        .or_else(|| Some(config::local_user()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "root".to_owned());
    let strict = host_config.strict_host_key_checking.as_deref();
    let keepalive = match options
        .keepalive_interval
        .or(host_config.server_alive_interval)
    {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(15)),
    };
    let host = host_config.host_name.unwrap_or_else(|| alias.to_owned());
    let port = port.or(options.port).or(host_config.port).unwrap_or(22);
    let proxy_command = host_config
        .proxy_command
        .filter(|command| !command.is_empty())
        .map(|command| proxy::expand(&command, &host, port, &user, alias));
    let algorithms = Algorithms::from_config(
        host_config.kex_algorithms.as_deref(),
        host_config.host_key_algorithms.as_deref(),
        host_config.ciphers.as_deref(),
        host_config.macs.as_deref(),
    )
    .map_err(|why| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("the SSH config's algorithms for `{alias}` are not {why}"),
        )
    })?;
    let hop = Hop {
        alias: alias.to_owned(),
        host,
        port,
        proxy_command,
        user,
        identity_files: host_config.identity_files,
        identities_only: host_config.identities_only.unwrap_or(false),
        known_hosts: options
            .known_hosts
            .clone()
            .or(host_config.user_known_hosts_file)
            .unwrap_or_else(|| {
                reach_core::local::home_dir()
                    .join(".ssh")
                    .join("known_hosts")
            }),
        host_key_alias: host_config.host_key_alias,
        identity_agent: identity_agent.clone(),
        certificate_files: host_config.certificate_files,
        forward_agent: {
            let configured = host_config.forward_agent.as_deref();
            let socket =
                || auth::agent_socket(options.agent_socket.as_ref(), identity_agent.as_deref());
            match (options.forward_agent, configured) {
                (Some(false), _) => None,
                (Some(true), _) => socket(),
                (None, None) => None,
                (None, Some(v)) if v.eq_ignore_ascii_case("no") => None,
                (None, Some(v)) if v.eq_ignore_ascii_case("yes") => socket(),
                (None, Some(path)) => auth::agent_socket(None, Some(path)),
            }
        },
        global_known_hosts: host_config
            .global_known_hosts_files
            .unwrap_or_else(|| GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from).collect()),
        accept_new: options.accept_new_host_key
            || matches!(strict, Some("accept-new" | "no" | "off")),
        connect_timeout: options
            .connect_timeout
            .or(host_config.connect_timeout)
            .unwrap_or(Duration::from_secs(15)),
        keepalive,
        keepalive_max: host_config.server_alive_count_max.unwrap_or(3) as usize,
        algorithms,
        local_forwards: host_config.local_forwards,
    };
    Ok((hop, host_config.proxy_jump.unwrap_or_default()))
}

type Handle = client::Handle<HostKeyCheck>;

/// Where `ssh` looks for host keys that the administrator manages for everyone.
const GLOBAL_KNOWN_HOSTS: [&str; 2] = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// One authenticated connection and what is shared over it.
struct Conn {
    handle: Arc<Handle>,
    /// Permits for sessions; a process holds one until its channel closes.
    sessions: Arc<tokio::sync::Semaphore>,
    /// The SFTP session, opened on first use.
    sftp: tokio::sync::OnceCell<Arc<SftpFs>>,
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
        let (handle, carriers) = match tokio::time::timeout(limit, self.open()).await {
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
            let exec = sftp::RemoteExec {
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
                    self.handshake(hop, stream).await?
                }
                Some(via) => {
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
        auth::authenticate(&mut handle, hop, &self.options).await?;
        Ok(handle)
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

/// `uname -s; uname -m` output as a platform.
fn parse_uname(stdout: &[u8]) -> Option<Platform> {
    let text = String::from_utf8_lossy(stdout).to_ascii_lowercase();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (os, arch) = (lines.next()?, lines.next()?);
    if os.contains(' ') || arch.contains(' ') {
        return None;
    }
    Some(Platform {
        os: if os == "darwin" {
            "macos".into()
        } else {
            os.to_owned()
        },
        arch: arch.to_owned(),
        variant: None,
    })
}

/// `ver & echo %PROCESSOR_ARCHITECTURE%` output (cmd.exe) as a platform.
fn parse_windows(stdout: &[u8]) -> Option<Platform> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let version = lines.next()?;
    if !version.contains("Windows") {
        return None;
    }
    let arch = match lines.next()?.to_ascii_uppercase().as_str() {
        "AMD64" => "x86_64".to_owned(),
        "ARM64" => "aarch64".to_owned(),
        "X86" => "i686".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    let variant = version
        .split("Version ")
        .nth(1)
        .map(|v| format!("windows {}", v.trim_end_matches(']')));
    Some(Platform {
        os: "windows".into(),
        arch,
        variant,
    })
}

/// The russh client handler: checks the host key against known_hosts.
#[derive(Debug)]
struct HostKeyCheck {
    host: String,
    port: u16,
    /// The user's and the system's known_hosts files, read once for the handshake.
    known: KnownHosts,
    /// The agent that agent channels from the server are joined to; `None` refuses them.
    forward_to: Option<PathBuf>,
    /// The `@cert-authority` keys trusted for this host.
    authorities: Vec<PublicKey>,
    accept_new: bool,
    rejection: Arc<Mutex<Option<Error>>>,
}

/// A hop's known_hosts files, read once per handshake: the user's, whose absence or read
/// error matters, then the system's, where an unreadable file says nothing (as for `ssh`).
#[derive(Debug)]
struct KnownHosts {
    user: PathBuf,
    /// `Ok(None)` when the user's file does not exist.
    user_text: std::io::Result<Option<String>>,
    global: Vec<(PathBuf, String)>,
}

impl KnownHosts {
    fn read(user: &Path, global: &[PathBuf]) -> KnownHosts {
        let user_text = match std::fs::read_to_string(user) {
            Ok(text) => Ok(Some(text)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        };
        KnownHosts {
            user: user.to_owned(),
            user_text,
            global: global
                .iter()
                .filter_map(|file| Some((file.clone(), std::fs::read_to_string(file).ok()?)))
                .collect(),
        }
    }

    /// Every file that was read, with its text, the user's first.
    fn texts(&self) -> impl Iterator<Item = (&Path, &str)> {
        let user = match &self.user_text {
            Ok(Some(text)) => Some((self.user.as_path(), text.as_str())),
            _ => None,
        };
        user.into_iter().chain(
            self.global
                .iter()
                .map(|(file, text)| (file.as_path(), text.as_str())),
        )
    }

    /// What each file says about `algorithm` `blob` for `host`:`port`.
    fn verdicts(
        &self,
        host: &str,
        port: u16,
        algorithm: &str,
        blob: &str,
    ) -> Vec<(&Path, known_hosts::Verdict)> {
        self.texts()
            .map(|(file, text)| (file, known_hosts::check(text, host, port, algorithm, blob)))
            .collect()
    }
}

/// A key's algorithm name and base64 blob, as a known_hosts line writes them.
fn openssh_fields(key: &PublicKey) -> Result<(String, String)> {
    let openssh = key
        .to_openssh()
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("unreadable host key: {e}")))?;
    let mut parts = openssh.split_whitespace();
    Ok((
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    ))
}

impl HostKeyCheck {
    fn verdict(&self, key: &PublicKey) -> Result<()> {
        let (algorithm, blob) = &openssh_fields(key)?;
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let path = self.known.user.display();
        let user_file_missing = match &self.known.user_text {
            Ok(text) => text.is_none(),
            Err(e) => {
                let e = std::io::Error::new(e.kind(), e.to_string());
                return Err(Error::io(format!("read known_hosts file `{path}`"), e));
            }
        };
        // A key known to any file is known, a revoked one is refused whatever the others
        // say, and a host whose entries all hold other keys has changed its key.
        let verdicts = self.known.verdicts(&self.host, self.port, algorithm, blob);
        let reject = |why: String| Err(Error::new(ErrorKind::HostKeyRejected, why));
        if let Some((file, line)) = verdicts.iter().find_map(|(file, v)| match v {
            known_hosts::Verdict::Revoked(line) => Some((file, line)),
            _ => None,
        }) {
            return reject(format!(
                "the host key of `{name}` ({algorithm} {fingerprint}) is marked @revoked in \
                 `{}` line {line}: refusing to connect",
                file.display()
            ));
        }
        if verdicts
            .iter()
            .any(|(_, v)| matches!(v, known_hosts::Verdict::Known))
        {
            return Ok(());
        }
        if let Some((file, line)) = verdicts.iter().find_map(|(file, v)| match v {
            known_hosts::Verdict::Changed(line) => Some((file, line)),
            _ => None,
        }) {
            return reject(format!(
                "the host key of `{name}` CHANGED: it is now {algorithm} {fingerprint}, but \
                 `{}` line {line} records another. This may be an attack. If the server was \
                 really re-keyed, remove that line and connect again",
                file.display()
            ));
        }
        if self.accept_new {
            use std::io::Write;
            if let Some(dir) = self.known.user.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("create `{}`", dir.display()), e))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.known.user)
                .map_err(|e| Error::io(format!("open `{path}`"), e))?;
            return file
                .write_all(known_hosts::entry(&self.host, self.port, algorithm, blob).as_bytes())
                .map_err(|e| Error::io(format!("write `{path}`"), e));
        }
        if user_file_missing {
            return reject(format!(
                "known_hosts file `{path}` does not exist, so the host key of `{name}` \
                 ({algorithm} {fingerprint}) cannot be checked: create the file, or \
                 pass --accept-new-host-key to record this key"
            ));
        }
        reject(format!(
            "the host key of `{name}` is unknown ({algorithm} {fingerprint}, not in \
             `{path}`): check the fingerprint with the server's administrator, then pass \
             --accept-new-host-key to record it"
        ))
    }
}

impl HostKeyCheck {
    /// A host certificate is good when an authority trusted for this host signed it, it is
    /// a host certificate, it is valid now, it names this host (or no host), and neither
    /// its key nor its authority is revoked.
    fn certified(&self, cert: &russh::keys::Certificate) -> Result<()> {
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let reject = |why: String| Err(Error::new(ErrorKind::HostKeyRejected, why));
        let fingerprints: Vec<_> = self
            .authorities
            .iter()
            .map(|ca| ca.fingerprint(HashAlg::Sha256))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Err(e) = cert.validate_at(now, fingerprints.iter()) {
            return reject(format!(
                "the host certificate of `{name}` (signed by {}) is not valid: {e}; \
                 check the @cert-authority lines of your known_hosts files",
                cert.signature_key().fingerprint(HashAlg::Sha256)
            ));
        }
        if cert.cert_type() != russh::keys::ssh_key::certificate::CertType::Host {
            return reject(format!(
                "`{name}` offered a user certificate as its host key"
            ));
        }
        let principals = cert.valid_principals();
        if !principals.is_empty() && !principals.iter().any(|p| p == &self.host) {
            return reject(format!(
                "the host certificate of `{name}` is for {principals:?}, not `{}`",
                self.host
            ));
        }
        for key in [
            PublicKey::from(cert.public_key().clone()),
            PublicKey::from(cert.signature_key().clone()),
        ] {
            self.verdict_revoked_only(&key)?;
        }
        Ok(())
    }

    /// Refuses `key` if any known_hosts file marks it `@revoked`.
    fn verdict_revoked_only(&self, key: &PublicKey) -> Result<()> {
        let (algorithm, blob) = &openssh_fields(key)?;
        for (file, verdict) in self.known.verdicts(&self.host, self.port, algorithm, blob) {
            if let known_hosts::Verdict::Revoked(line) = verdict {
                return Err(Error::new(
                    ErrorKind::HostKeyRejected,
                    format!(
                        "the host certificate of `{}` uses a key marked @revoked in `{}` line \
                         {line}: refusing to connect",
                        known_hosts::host_entry_name(&self.host, self.port),
                        file.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    /// An agent channel the server opens for a forwarding session: joined to the local
    /// agent when forwarding was asked for, refused otherwise.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(socket) = self.forward_to.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            let Ok(mut agent) = tokio::net::UnixStream::connect(&socket).await else {
                return;
            };
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
        });
        Ok(())
    }

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let verdict = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.verdict(key),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => self.certified(cert),
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
    fn kind(&self) -> BackendKind {
        BackendKind::Ssh
    }

    /// No `Signals`: the server decides whether a signal request reaches the command
    /// (OpenSSH delivers only some, to the first process, not to what it started).
    fn capabilities(&self) -> Capabilities {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_from_uname_and_windows_ver() {
        let linux = parse_uname(b"Linux\nx86_64\n").unwrap();
        assert_eq!(
            (linux.os.as_str(), linux.arch.as_str()),
            ("linux", "x86_64")
        );
        assert_eq!(parse_uname(b"Darwin\narm64\n").unwrap().os, "macos");
        assert!(parse_uname(b"'uname' is not recognized as a command\n").is_none());
        let windows =
            parse_windows(b"\r\nMicrosoft Windows [Version 10.0.20348.2655]\r\nAMD64\r\n").unwrap();
        assert_eq!(windows.os, "windows");
        assert_eq!(windows.arch, "x86_64");
        assert_eq!(windows.variant.as_deref(), Some("windows 10.0.20348.2655"));
        assert!(parse_windows(b"sh: ver: not found\n").is_none());
    }
}
