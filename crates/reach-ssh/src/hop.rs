//! One hop of a connection (the server, or a jump host) resolved as `ssh` resolves it:
//! explicit options, then the config, then the defaults.

use std::path::PathBuf;
use std::time::Duration;

use reach_core::{Destination, Error, ErrorKind, Result};

use crate::algorithms::Algorithms;
use crate::config::SshConfig;
use crate::*;

/// One hop, fully resolved: where to connect and how to log in.
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    /// What the user typed (the config's `Host` name).
    pub(crate) alias: String,
    /// The host to connect to (after `HostName`).
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) identity_files: Vec<PathBuf>,
    pub(crate) identities_only: bool,
    pub(crate) known_hosts: PathBuf,
    /// System-wide known_hosts files, checked after `known_hosts` and never written.
    pub(crate) global_known_hosts: Vec<PathBuf>,
    /// `HostKeyAlias`: the known_hosts name of the host key, used as written.
    pub(crate) host_key_alias: Option<String>,
    /// `IdentityAgent` from the config, as written.
    pub(crate) identity_agent: Option<String>,
    /// `CertificateFile`s from the config.
    pub(crate) certificate_files: Vec<PathBuf>,
    /// The agent socket that sessions forward to the target, when agent forwarding is on.
    pub(crate) forward_agent: Option<PathBuf>,
    pub(crate) accept_new: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) keepalive_max: usize,
    /// The `ProxyCommand` that carries a first hop, tokens expanded.
    pub(crate) proxy_command: Option<String>,
    /// What the handshake offers (`KexAlgorithms`, `HostKeyAlgorithms`, `Ciphers`, `MACs`).
    pub(crate) algorithms: Algorithms,
    /// `LocalForward`s from the config, as `-L` specs.
    pub(crate) local_forwards: Vec<String>,
}

impl Hop {
    pub(crate) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `[user@]host[:port]` (a ProxyJump entry, or `ssh://...`).
pub(crate) fn split_jump(spec: &str) -> Result<(Option<String>, String, Option<u16>)> {
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
pub(crate) fn resolve_hop(
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

/// Where `ssh` looks for host keys that the administrator manages for everyone.
pub(crate) const GLOBAL_KNOWN_HOSTS: [&str; 2] =
    ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];
