//! The connection settings of a call, as they cross to the daemon, and the key that says
//! which held connection serves them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reach::ssh::zeroize::Zeroizing;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::ConnArgs;

/// The connection settings of one call, as the daemon needs them: paths made absolute, the
/// environment the backends would read (HOME, SSH_AUTH_SOCK, DOCKER_HOST) captured, secrets
/// from the environment included (never logged, never part of the key).
#[derive(Serialize, Deserialize)]
pub struct ConnWire {
    /// Everything but the secrets: what the connection's key is made of.
    #[serde(flatten)]
    pub settings: ConnSettings,
    #[serde(with = "secret")]
    password: Option<Zeroizing<String>>,
    #[serde(with = "secret")]
    passphrase: Option<Zeroizing<String>>,
}

/// The settings of a [`ConnWire`] that are no secret.
#[derive(Serialize, Deserialize, Default)]
pub struct ConnSettings {
    identity: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    accept_new_host_key: bool,
    ssh_config: Option<PathBuf>,
    /// `-o` options.
    #[serde(default)]
    ssh_options: Vec<String>,
    port: Option<u16>,
    login: Option<String>,
    jump: Option<Vec<String>>,
    connect_timeout_ms: Option<u64>,
    docker_host: Option<String>,
    docker_agent: bool,
    /// The caller's ssh-agent socket.
    agent_socket: Option<PathBuf>,
    /// `-A`: forward that agent.
    #[serde(default)]
    forward_agent: bool,
    /// `--ssh-agent-helper`: `never`, `auto` or `always`.
    #[serde(default)]
    agent_helper: Option<String>,
    /// `--ssh-agent-helper-dir`.
    #[serde(default)]
    agent_helper_dir: Option<String>,
    /// The caller's HOME: where default keys and configuration are found.
    pub home: Option<PathBuf>,
}

impl ConnWire {
    /// The settings given by `conn` and this process's environment.
    pub fn from_args(conn: &ConnArgs) -> ConnWire {
        let env_path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let settings = ConnSettings {
            identity: conn.identity.as_deref().map(absolute_unless_key_text),
            known_hosts: conn.known_hosts.as_deref().map(absolute),
            accept_new_host_key: conn.accept_new_host_key,
            ssh_config: conn.ssh_config.as_deref().map(absolute),
            ssh_options: conn.ssh_options.clone(),
            port: conn.port,
            login: conn.login.clone(),
            jump: conn
                .jump
                .as_ref()
                .map(|j| j.split(',').map(|s| s.trim().to_owned()).collect()),
            connect_timeout_ms: conn
                .connect_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            docker_host: conn
                .docker_host
                .clone()
                .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty())),
            docker_agent: !conn.no_agent,
            agent_socket: env_path("SSH_AUTH_SOCK"),
            forward_agent: conn.forward_agent,
            agent_helper: conn.ssh_agent_helper.map(|mode| mode.to_string()),
            agent_helper_dir: conn.ssh_agent_helper_dir.clone(),
            home: env_path("HOME"),
        };
        ConnWire {
            settings,
            password: secret_from_env("REACH_SSH_PASSWORD"),
            passphrase: secret_from_env("REACH_SSH_PASSPHRASE"),
        }
    }

    /// The backend options these settings describe; `prompt` asks for secrets not given.
    pub fn options(&self, prompt: Option<reach::ssh::Prompt>) -> reach::ConnectOptions {
        let mut options = reach::ConnectOptions::default();
        let settings = &self.settings;
        let ssh = &mut options.ssh;
        ssh.identity = settings.identity.clone();
        ssh.known_hosts = settings.known_hosts.clone();
        ssh.accept_new_host_key = settings.accept_new_host_key;
        ssh.config_file = settings.ssh_config.clone();
        ssh.config_options = settings.ssh_options.clone();
        ssh.port = settings.port;
        ssh.user = settings.login.clone();
        ssh.proxy_jump = settings.jump.clone();
        ssh.connect_timeout = settings.connect_timeout_ms.map(Duration::from_millis);
        ssh.agent_socket = settings.agent_socket.clone();
        ssh.forward_agent = settings.forward_agent.then_some(true);
        if let Some(mode) = settings
            .agent_helper
            .as_deref()
            .and_then(|m| m.parse().ok())
        {
            ssh.agent_helper = mode;
        }
        ssh.agent_helper_dir = settings.agent_helper_dir.clone();
        ssh.password = self.password.clone();
        ssh.passphrase = self.passphrase.clone();
        ssh.prompt = prompt;
        let docker = &mut options.docker;
        docker.host = settings.docker_host.clone();
        docker.agent = settings.docker_agent;
        options
    }

    /// Which connection serves `destination` with these settings: a hash of both, of the
    /// size and modification time of the identity file and of every configuration file
    /// (the main one and each it includes: an edited key or config, or a new file matching
    /// an `Include` glob, gets a new connection), and of whether secrets were given (not
    /// their values).
    pub fn key(&self, destination: &str) -> String {
        let settings = &self.settings;
        let config = settings.ssh_config.clone().or_else(|| {
            settings
                .home
                .as_ref()
                .map(|home| home.join(".ssh").join("config"))
        });
        let parts = serde_json::json!({
            "destination": destination,
            "settings": settings,
            "identity_file": settings.identity.as_deref().map(stamp),
            "ssh_config_files": config.as_deref().map(config_stamps),
            "password": self.password.is_some(),
            "passphrase": self.passphrase.is_some(),
        });
        let digest = Sha256::digest(parts.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the call may be asked for a secret the daemon cannot ask for.
    pub fn has_secrets(&self) -> bool {
        self.password.is_some() || self.passphrase.is_some()
    }
}

/// `(size, mtime)` of a file, or nothing when it cannot be read.
fn stamp(path: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some((meta.len(), mtime))
}

/// Each file `config` reads (itself and its includes) with its [`stamp`]. A file that does
/// not parse counts as itself alone: connecting will report what is wrong with it.
fn config_stamps(config: &Path) -> Vec<(PathBuf, Option<(u64, u128)>)> {
    let files = match reach::ssh::config::SshConfig::load(config) {
        Ok(parsed) => parsed.files().to_vec(),
        Err(_) => vec![config.to_owned()],
    };
    files
        .into_iter()
        .map(|file| {
            let stamp = stamp(&file);
            (file, stamp)
        })
        .collect()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// `-i` takes a file or the key text itself; only a file is made absolute.
fn absolute_unless_key_text(path: &Path) -> PathBuf {
    if path.to_string_lossy().starts_with("-----BEGIN") {
        path.to_owned()
    } else {
        absolute(path)
    }
}

/// A secret from the environment (for scripts), held in a buffer wiped on drop.
pub fn secret_from_env(name: &str) -> Option<Zeroizing<String>> {
    std::env::var(name).ok().map(Zeroizing::new)
}

/// Secrets travel as JSON strings and live in wiped buffers on both sides.
mod secret {
    use reach::ssh::zeroize::Zeroizing;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Zeroizing<String>>,
        to: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().map(|s| s.as_str()).serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        from: D,
    ) -> Result<Option<Zeroizing<String>>, D::Error> {
        Ok(Option::<String>::deserialize(from)?.map(Zeroizing::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_changes_with_identity_and_config_but_not_with_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("id");
        std::fs::write(&key_file, "one").expect("write");
        let conn = |identity: Option<&Path>| ConnWire {
            settings: ConnSettings {
                identity: identity.map(Path::to_owned),
                ssh_config: Some(dir.path().join("config")),
                docker_agent: true,
                ..ConnSettings::default()
            },
            password: None,
            passphrase: None,
        };
        let plain = conn(None).key("ssh://h");
        assert_eq!(plain, conn(None).key("ssh://h"));
        assert_ne!(plain, conn(None).key("ssh://other"));
        let with_key = conn(Some(&key_file)).key("ssh://h");
        assert_ne!(plain, with_key);
        std::fs::write(dir.path().join("config"), "Port 2222\n").expect("write");
        assert_ne!(
            plain,
            conn(None).key("ssh://h"),
            "a new config file, a new key"
        );
        std::fs::write(&key_file, "a replaced key").expect("write");
        assert_ne!(with_key, conn(Some(&key_file)).key("ssh://h"));
        let mut with_option = conn(None);
        with_option.settings.ssh_options = vec!["Ciphers=aes128-ctr".into()];
        assert_ne!(
            conn(None).key("ssh://h"),
            with_option.key("ssh://h"),
            "an -o option, another connection"
        );

        // What an included file says counts too, and so does a new file an Include finds.
        let extra = dir.path().join("conf.d");
        std::fs::create_dir(&extra).expect("mkdir");
        std::fs::write(extra.join("a.conf"), "Host h\n  User one\n").expect("write");
        std::fs::write(
            dir.path().join("config"),
            format!("Include {}/*.conf\nPort 2222\n", extra.display()),
        )
        .expect("write");
        let included = conn(None).key("ssh://h");
        assert_eq!(included, conn(None).key("ssh://h"));
        std::fs::write(extra.join("a.conf"), "Host h\n  User other\n").expect("write");
        let edited = conn(None).key("ssh://h");
        assert_ne!(included, edited, "an edited included file, a new key");
        std::fs::write(extra.join("b.conf"), "Host h\n  Port 2\n").expect("write");
        assert_ne!(
            edited,
            conn(None).key("ssh://h"),
            "a new file matching the Include, a new key"
        );
    }
}
