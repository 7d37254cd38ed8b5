//! Warm connections across CLI calls.
//!
//! The first `reach exec` on an SSH or Docker destination starts a per-user background
//! process, the *connection daemon* (`reach connections daemon`). It listens on a Unix socket in
//! a private runtime directory, opens the connection, runs the command on it and keeps the
//! connection afterwards; later calls with the same destination and connection settings send
//! their command to it and pay no handshake. The daemon closes a connection unused for its idle
//! time and exits when it holds none.
//!
//! The protocol is frames of `[kind: u8][length: u32 big-endian][payload]`: one JSON request,
//! then, for an exec, stdin/signal frames one way and stdout/stderr/exit frames the other. All
//! output frames precede the exit frame, so the completion contract holds through the daemon.

pub mod client;
pub mod daemon;

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reach::ssh::zeroize::Zeroizing;
use reach::{CommandLine, ExecSpec, StdinMode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::ConnArgs;

/// How long the daemon keeps an unused connection (and itself, once it holds none).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// The name of this build's daemon socket in the runtime directory.
fn socket_name() -> String {
    format!("daemon-{}.sock", build_id())
}

/// Held (flock) by this build's running daemon, so that two starting at once do not both
/// serve.
fn lock_name() -> String {
    format!("daemon-{}.lock", build_id())
}

/// Names this build of reach: its version and the executable file (device, inode, size,
/// modification time). The daemon's socket and lock carry it, so a daemon started by another
/// build (before an upgrade, or a development build beside the installed one) never serves
/// this one: each build has its own daemon, and an old one exits once idle.
pub fn build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut hasher = Sha256::new();
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        if let Some(meta) = std::env::current_exe()
            .ok()
            .and_then(|exe| std::fs::metadata(exe).ok())
        {
            let mtime = meta.mtime_nsec() as u128 + (meta.mtime() as u128) * 1_000_000_000;
            hasher.update(format!(
                "{}:{}:{}:{mtime}",
                meta.dev(),
                meta.ino(),
                meta.len()
            ));
        }
        hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// The sockets of every build's daemon in `dir` (this build's among them, if it runs).
fn agent_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("daemon") && n.ends_with(".sock"))
                })
                .collect()
        })
        .unwrap_or_default();
    sockets.sort();
    sockets
}
/// The daemon's stderr: its start, stop and refusals.
const LOG: &str = "daemon.log";
/// Larger frames are a protocol error (data frames are at most 64 KiB).
const MAX_FRAME: usize = 1 << 20;

/// Frame kinds.
pub mod frame {
    /// Client → daemon: the JSON request, first and once.
    pub const REQUEST: u8 = b'Q';
    /// Client → daemon: bytes for the command's stdin.
    pub const STDIN: u8 = b'I';
    /// Client → daemon: stdin ended.
    pub const STDIN_EOF: u8 = b'E';
    /// Client → daemon: a signal name for the command.
    pub const SIGNAL: u8 = b'S';
    /// Daemon → client: the command started.
    pub const STARTED: u8 = b'K';
    /// Daemon → client: the request failed (JSON `{kind, message}`); nothing runs.
    pub const FAILED: u8 = b'F';
    /// Daemon → client: this daemon cannot serve the request; connect directly instead.
    pub const UNAVAILABLE: u8 = b'U';
    /// Daemon → client: bytes the command wrote to stdout.
    pub const STDOUT: u8 = b'O';
    /// Daemon → client: bytes the command wrote to stderr.
    pub const STDERR: u8 = b'R';
    /// Daemon → client: how the command ended (JSON), after all of its output.
    pub const EXIT: u8 = b'X';
    /// Daemon → client: the JSON answer to a list, close or stop request.
    pub const REPLY: u8 = b'J';
}

/// This process's user id.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The private directory holding the daemon's socket: `$XDG_RUNTIME_DIR/reach`, else
/// `/run/user/UID/reach`, else `$TMPDIR/reach-UID`. Created 0700; refused unless it is a
/// directory of ours that no one else can enter.
pub fn runtime_dir() -> Result<PathBuf, String> {
    let me = uid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base).join("reach"),
        None => {
            let run = PathBuf::from(format!("/run/user/{me}"));
            match std::fs::metadata(&run) {
                Ok(meta) if meta.is_dir() && meta.uid() == me => run.join("reach"),
                _ => std::env::temp_dir().join(format!("reach-{me}")),
            }
        }
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists) => {}
        Err(e) => return Err(format!("cannot create `{}`: {e}", dir.display())),
    }
    check_private(&dir, me)?;
    Ok(dir)
}

/// Refuses a directory that is a symlink, not ours, or open to others.
fn check_private(dir: &Path, me: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect `{}`: {e}", dir.display()))?;
    let fix = "remove it, or set XDG_RUNTIME_DIR to a private directory";
    if !meta.is_dir() {
        return Err(format!("`{}` is not a directory: {fix}", dir.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "`{}` belongs to uid {}, not to this user (uid {me}): {fix}",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "`{}` has mode {mode:o}, open to other users: {fix} (it must be 0700)",
            dir.display()
        ));
    }
    Ok(())
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    to: &mut W,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut bytes = Vec::with_capacity(5 + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(payload);
    to.write_all(&bytes).await?;
    to.flush().await
}

/// Reads one frame; `None` when the peer closed the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match from.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::UnexpectedEof) => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (the limit is {MAX_FRAME})"),
        ));
    }
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

/// A request to the daemon.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a command on a warm connection (made first if needed).
    Exec(Box<ExecRequest>),
    /// Describe the daemon and its connections.
    List,
    /// Close the connections to these destinations (every one when empty).
    Close {
        /// Destinations, in their canonical form.
        destinations: Vec<String>,
    },
    /// Close everything and exit.
    Stop,
}

/// What to run, where, and how to connect.
#[derive(Serialize, Deserialize)]
pub struct ExecRequest {
    /// Which connection serves this: a hash of the destination and every setting.
    pub key: String,
    /// The destination, canonical.
    pub destination: String,
    /// How to connect.
    pub conn: ConnWire,
    /// The command.
    pub command: CommandWire,
    /// Variables added to the environment.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: Option<String>,
    /// The command's time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether stdin frames follow.
    pub stdin: bool,
}

/// [`CommandLine`] on the wire.
#[derive(Serialize, Deserialize)]
pub enum CommandWire {
    /// A program and its arguments.
    Argv(Vec<String>),
    /// A shell command line.
    Shell(String),
    /// The login shell.
    LoginShell,
}

impl ExecRequest {
    /// The request for running `spec` on `destination` with `conn`.
    pub fn new(destination: String, conn: ConnWire, spec: &ExecSpec) -> ExecRequest {
        ExecRequest {
            key: conn.key(&destination),
            destination,
            conn,
            command: match &spec.command {
                CommandLine::Argv(argv) => CommandWire::Argv(argv.clone()),
                CommandLine::Shell(line) => CommandWire::Shell(line.clone()),
                _ => CommandWire::LoginShell,
            },
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            timeout_ms: spec
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            stdin: spec.stdin == StdinMode::Piped,
        }
    }

    /// The spec to run.
    pub fn spec(&self) -> ExecSpec {
        let mut spec = ExecSpec::new(match &self.command {
            CommandWire::Argv(argv) => CommandLine::Argv(argv.clone()),
            CommandWire::Shell(line) => CommandLine::Shell(line.clone()),
            CommandWire::LoginShell => CommandLine::LoginShell,
        });
        spec.env = self.env.clone();
        spec.cwd = self.cwd.clone();
        spec.timeout = self.timeout_ms.map(Duration::from_millis);
        if self.stdin {
            spec.stdin = StdinMode::Piped;
        }
        spec
    }
}

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

/// A failure as JSON `{kind, message, subject}` (`subject` is null when not said).
pub fn error_value(err: &reach::Error) -> serde_json::Value {
    serde_json::json!({
        "kind": err.kind().as_str(),
        "message": err.message(),
        "subject": err.subject().map(reach::Subject::as_str),
    })
}

/// [`error_value`] as bytes for a frame.
pub fn error_json(err: &reach::Error) -> Vec<u8> {
    error_value(err).to_string().into_bytes()
}

/// The failure a `{kind, message, subject}` object describes.
pub fn error_from_json(value: &serde_json::Value) -> reach::Error {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .and_then(reach::ErrorKind::from_name)
        .unwrap_or(reach::ErrorKind::Protocol);
    let message = value
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("the connection daemon sent a malformed error");
    let error = reach::Error::new(kind, message);
    match value
        .get("subject")
        .and_then(|s| s.as_str())
        .and_then(reach::Subject::from_name)
    {
        Some(subject) => error.with_subject(subject),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, frame::STDOUT, b"hello")
            .await
            .expect("write");
        write_frame(&mut a, frame::STDIN_EOF, b"")
            .await
            .expect("write");
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((frame::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some((frame::STDIN_EOF, Vec::new()))
        );
        assert_eq!(read_frame(&mut b).await.expect("read"), None);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[frame::STDOUT, 0xff, 0xff, 0xff, 0xff])
            .await
            .expect("write");
        let err = read_frame(&mut b).await.expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_shared_or_foreign_runtime_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&open)
            .expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = check_private(&open, uid()).expect_err("0755 refused");
        assert!(err.contains("mode 755"), "{err}");
        let err = check_private(&open, uid() + 1).expect_err("foreign refused");
        assert!(err.contains("belongs to uid"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let err = check_private(&link, uid()).expect_err("symlink refused");
        assert!(err.contains("not a directory"), "{err}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(check_private(&open, uid()), Ok(()));
    }

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
