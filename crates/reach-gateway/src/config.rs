//! The gateway's configuration: a TOML file (`reach serve --config FILE`), every field with a
//! default so that `reach serve` runs with no file at all, and flags laid over it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};
use serde::Deserialize;

/// Everything `reach serve` needs. Unknown keys in the file are errors, so that a misspelt
/// setting is not silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen (default `127.0.0.1:2222`).
    pub listen: SocketAddr,
    /// Where host keys and the instance id live (default `~/.local/state/reach/serve`).
    pub state_dir: Option<PathBuf>,
    /// The name that labels this gateway's containers; generated once and kept in the state
    /// directory when unset.
    pub instance: Option<String>,
    /// Seconds of client silence before a keepalive probe (default 15); after
    /// [`Config::keepalive_max`] unanswered probes the connection is dropped and its
    /// containers removed.
    pub keepalive_secs: u64,
    /// Unanswered keepalives before the client counts as gone (default 3).
    pub keepalive_max: usize,
    /// Who may log in, and how.
    pub auth: AuthConfig,
    /// Where sessions run.
    pub backend: BackendConfig,
    /// What a session may ask for.
    pub session: SessionConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            state_dir: None,
            instance: None,
            keepalive_secs: 15,
            keepalive_max: 3,
            auth: AuthConfig::default(),
            backend: BackendConfig::default(),
            session: SessionConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// One `authorized_keys` file for every user name; `%u` in the path is replaced by the
    /// user name, which gives one file per user. Default: the gateway user's
    /// `~/.ssh/authorized_keys` (when no `users` table or webhook is configured).
    pub authorized_keys: Option<PathBuf>,
    /// Users with their own keys and/or password.
    pub users: BTreeMap<String, UserConfig>,
    /// Asks an HTTP service about keys that no file matched.
    pub webhook: Option<WebhookConfig>,
    /// Failed attempts allowed from one source address within `failure_window_secs` before
    /// its connections are refused (default 10).
    pub max_failures: u32,
    /// The window of `max_failures`, in seconds (default 300).
    pub failure_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            authorized_keys: None,
            users: BTreeMap::new(),
            webhook: None,
            max_failures: 10,
            failure_window_secs: 300,
        }
    }
}

/// One user's credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct UserConfig {
    /// This user's `authorized_keys` file.
    pub authorized_keys: Option<PathBuf>,
    /// An argon2 hash in PHC form (`$argon2id$v=19$...`), as `reach serve --hash-password`
    /// prints; the password itself is never stored.
    pub password: Option<String>,
}

/// The authentication webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// `https://host[:port]/path` (or `http://` to a loopback address); it receives a JSON
    /// POST and answers `{"allow": true}` to let the key in. Anything else — another answer,
    /// an error, a timeout, a certificate that does not verify — denies.
    pub url: String,
    /// How long to wait for the answer, in milliseconds (default 2000).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// PEM file of the CA(s) that sign the webhook's certificate; when set, the only ones
    /// trusted (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate the gateway presents to the webhook (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// File (mode 0600) holding a shared secret, sent as `Authorization: Bearer <secret>`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept a plain `http://` URL to a host that is not loopback (default false: an allow
    /// sent in the clear can be forged on the way).
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn default_webhook_timeout() -> u64 {
    2000
}

/// Which backend runs the gateway's sessions (a subset of `reach_core::BackendKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBackend {
    /// Processes on this host, as the gateway's user.
    #[default]
    Local,
    /// Docker containers.
    Docker,
    /// The target of a plugin adapter (`destination`, served by `plugin` or the gateway
    /// user's own `[plugins]`).
    Plugin,
}

/// How containers map onto SSH connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerMode {
    /// One container per SSH connection; each channel is an exec in it.
    #[default]
    Connection,
    /// One container per channel (session).
    Session,
    /// One container per user, kept across connections and removed after
    /// `idle_timeout_secs` without any.
    Persistent,
}

/// Backend settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BackendConfig {
    /// `local`, `docker` or `plugin`.
    pub kind: SessionBackend,
    /// Plugin: the destination every session runs on (`lxd://web`); its scheme names the
    /// adapter.
    pub destination: Option<String>,
    /// Plugin: the adapter (`path`, `sha256`, `args`, `env`, as `[plugins.<scheme>]` of a
    /// user's configuration). Unset: the gateway user's own configuration. An adapter runs
    /// only when its SHA-256 matches the pin.
    pub plugin: Option<reach_plugin::AdapterConfig>,
    /// Docker: `connection`, `session` or `persistent`.
    pub mode: ContainerMode,
    /// Docker: the image (it must be on the engine).
    pub image: Option<String>,
    /// Docker: the container's main process, which only has to stay up (default
    /// `sleep 2147483647`); sessions are execs beside it.
    pub command: Vec<String>,
    /// Docker: environment of the container.
    pub env: BTreeMap<String, String>,
    /// Docker: the network (`bridge`, `none`, a user network).
    pub network: Option<String>,
    /// Docker: CPU limit in CPUs.
    pub cpus: Option<f64>,
    /// Docker: memory limit (`512m`, `2g`, or bytes).
    pub memory: Option<String>,
    /// Docker: most processes in the container.
    pub pids_limit: Option<i64>,
    /// Docker: extra labels on every container.
    pub labels: BTreeMap<String, String>,
    /// Docker: the user sessions run as (the image's default when unset).
    pub user: Option<String>,
    /// Docker, persistent mode: seconds a user's container outlives their last connection
    /// (default 600).
    pub idle_timeout_secs: u64,
    /// Docker: the engine (`unix:///var/run/docker.sock`; default `DOCKER_HOST`).
    pub docker_host: Option<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: SessionBackend::Local,
            destination: None,
            plugin: None,
            mode: ContainerMode::Connection,
            image: None,
            command: vec!["sleep".to_owned(), "2147483647".to_owned()],
            env: BTreeMap::new(),
            network: None,
            cpus: None,
            memory: None,
            pids_limit: None,
            labels: BTreeMap::new(),
            user: None,
            idle_timeout_secs: 600,
            docker_host: None,
        }
    }
}

/// What sessions may request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Environment variables a client may set (`env` requests); a trailing `*` matches a
    /// prefix. Default `LANG` and `LC_*`, as sshd's Debian default.
    pub accept_env: Vec<String>,
    /// Whether `ssh -A` may forward the client's agent into sessions (default true; the
    /// `no-agent-forwarding` key option still refuses it per key).
    pub agent_forwarding: bool,
    /// Whether `ssh -L` may forward TCP connections, made from where sessions run: this host,
    /// or the connection's (or the user's) container (default true, as sshd's
    /// `AllowTcpForwarding`; the `no-port-forwarding` key option still refuses it per key).
    /// A container per session has no place for them, so that mode refuses them.
    pub tcp_forwarding: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            accept_env: vec!["LANG".to_owned(), "LC_*".to_owned()],
            agent_forwarding: true,
            tcp_forwarding: true,
        }
    }
}

/// The metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Where to serve `/metrics` (off when unset).
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                format!("reading the gateway config `{}`", path.display()),
                e,
            )
        })?;
        Self::from_toml(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{}: {}", path.display(), e.message()),
            )
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid gateway config: {}", e.message().trim()),
            )
        })
    }

    /// Checks what can be checked before listening: a docker backend has an image, sizes
    /// parse, someone can log in.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::new(ErrorKind::InvalidInput, m));
        if self.backend.kind == SessionBackend::Docker && self.backend.image.is_none() {
            return invalid(
                "the docker backend needs an image (`--image IMG`, or `image` under \
                 [backend])"
                    .to_owned(),
            );
        }
        if self.backend.kind == SessionBackend::Plugin {
            let destination = self.backend.destination.as_deref().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "the plugin backend needs a destination (`destination = \"lxd://web\"` \
                     under [backend])",
                )
            })?;
            reach_core::Destination::parse(destination)?;
        }
        if self.backend.command.is_empty() {
            return invalid("[backend] command must name a program".to_owned());
        }
        if let Some(memory) = &self.backend.memory {
            parse_size(memory)?;
        }
        for (name, user) in &self.auth.users {
            if let Some(hash) = &user.password {
                crate::auth::check_phc(hash).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("[auth.users.{name}] password: {}", e.message()),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The state directory, defaulted.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_STATE_HOME")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| reach_core::local::home_dir().join(".local/state"));
            base.join("reach/serve")
        })
    }

    /// The keepalive interval.
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_secs > 0).then(|| Duration::from_secs(self.keepalive_secs))
    }
}

/// `512m`, `2g`, `1024k` or plain bytes.
pub fn parse_size(text: &str) -> Result<i64> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => 64,
    };
    match digits.parse::<i64>() {
        Ok(n) if shift < 64 && !digits.is_empty() => n.checked_mul(1 << shift).ok_or(()),
        _ => Err(()),
    }
    .map_err(|()| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{text}` is not a size (write it as 512m, 2g, or a number of bytes)"),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12q").is_err());
    }

    #[test]
    fn a_full_file_parses_and_a_typo_is_named() {
        let config = Config::from_toml(
            r#"
            listen = "127.0.0.1:2022"
            keepalive_secs = 5
            [auth]
            authorized_keys = "/etc/reach/keys/%u"
            max_failures = 3
            [auth.users.alice]
            password = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$N1m3Wv+mGJzcA0cK0OEBkSh3nwG4Jw3Wq2L0z0qy7Xw"
            [auth.webhook]
            url = "http://127.0.0.1:9/auth"
            [backend]
            kind = "docker"
            mode = "session"
            image = "busybox"
            memory = "256m"
            [session]
            accept_env = ["LANG", "FOO"]
            [metrics]
            listen = "127.0.0.1:9101"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 2022);
        assert_eq!(config.backend.mode, ContainerMode::Session);
        assert_eq!(config.auth.max_failures, 3);
        assert!(config.auth.users.contains_key("alice"));
        let err = Config::from_toml("[backend]\nimagee = \"x\"\n").unwrap_err();
        assert!(err.message().contains("imagee"), "{}", err.message());
    }
}
