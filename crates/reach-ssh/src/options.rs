//! How to connect, beyond what a destination says.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::*;

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
    /// Whether commands go through the reach agent on the server (see [`AgentHelper`]).
    pub agent_helper: AgentHelper,
    /// Where the agent is put on the server (default `$XDG_RUNTIME_DIR/reach`, else
    /// `~/.cache/reach`); made 0700.
    pub agent_helper_dir: Option<String>,
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
            agent_helper: AgentHelper::default(),
            agent_helper_dir: None,
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
            .field("agent_helper", &self.agent_helper)
            .field("agent_helper_dir", &self.agent_helper_dir)
            .finish()
    }
}
