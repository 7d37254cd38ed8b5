//! OpenSSH client configuration (`~/.ssh/config`, or the file given with `-F`).
//!
//! Read as `ssh` reads it: the file is scanned top to bottom, and for each keyword the
//! first value from a matching `Host` block wins (`IdentityFile` accumulates). Supported:
//! `Host` patterns (`*`, `?`, `!negation`, several per line), `Include` (globs, relative to
//! `~/.ssh`), `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`, `ProxyJump`,
//! `ProxyCommand`,
//! `ServerAliveInterval`, `ServerAliveCountMax`, `ConnectTimeout`, `UserKnownHostsFile`,
//! `GlobalKnownHostsFile`, `HostKeyAlias`, `IdentityAgent`, `CertificateFile`, `ForwardAgent`,
//! `StrictHostKeyChecking`, `KexAlgorithms`, `HostKeyAlgorithms`, `Ciphers`, `MACs`, and
//! `Match` blocks with `all`, `host`, `originalhost`, `user`,
//! `localuser`, `exec`, `final` and `canonical` (`!` negates; every criterion on a line must
//! hold). `Match host` sees the `HostName` set so far and `Match user` the remote user; a
//! configuration with `Match final` (or `canonical`) is read a second time with those
//! blocks matching, as `ssh` does. Other keywords are ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};

use crate::algorithms::{self, Kind};
use reach_core::pattern::{list_matches, wildcard_ignore_ascii_case};

/// What the configuration says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// The real host name to connect to.
    pub host_name: Option<String>,
    /// The user to log in as.
    pub user: Option<String>,
    /// The port.
    pub port: Option<u16>,
    /// Private keys to offer, in order (tokens and `~` expanded).
    pub identity_files: Vec<PathBuf>,
    /// OpenSSH certificates to offer with the keys they certify (`~` expanded).
    pub certificate_files: Vec<PathBuf>,
    /// Offer only the identity files, not the agent's other keys.
    pub identities_only: Option<bool>,
    /// Jump hosts, in order (`none` gives an empty list).
    pub proxy_jump: Option<Vec<String>>,
    /// A command whose stdin and stdout carry the connection (`none` gives an empty string).
    /// `ProxyJump` and `ProxyCommand` exclude each other: the first one read wins.
    pub proxy_command: Option<String>,
    /// Keepalive interval (`0` disables).
    pub server_alive_interval: Option<Duration>,
    /// Unanswered keepalives before the connection counts as dead.
    pub server_alive_count_max: Option<u32>,
    /// TCP connect (and handshake) limit.
    pub connect_timeout: Option<Duration>,
    /// known_hosts files (the first one is used).
    pub user_known_hosts_file: Option<PathBuf>,
    /// System-wide known_hosts files, read but never written (`none`: an empty list).
    pub global_known_hosts_files: Option<Vec<PathBuf>>,
    /// The name the host key is looked up and recorded under, instead of `host:port`.
    pub host_key_alias: Option<String>,
    /// The ssh-agent socket: a path (`~` and `$VAR` expanded), `SSH_AUTH_SOCK` for the
    /// environment's, or `none` for no agent.
    pub identity_agent: Option<String>,
    /// `ForwardAgent`: `yes`, `no`, or the socket of the agent to forward.
    pub forward_agent: Option<String>,
    /// `accept-new` (or `no`/`off`) makes unknown host keys acceptable.
    pub strict_host_key_checking: Option<String>,
    /// `LocalForward` lines, every one that applies, in order, each as one
    /// `[BIND:]PORT:HOST:HOSTPORT` (what `reach forward` runs with no forwards given).
    pub local_forwards: Vec<String>,
    /// `KexAlgorithms`, as written (`+`, `-` and `^` lists change the defaults).
    pub kex_algorithms: Option<String>,
    /// `HostKeyAlgorithms`, as written.
    pub host_key_algorithms: Option<String>,
    /// `Ciphers`, as written.
    pub ciphers: Option<String>,
    /// `MACs`, as written.
    pub macs: Option<String>,
}

/// One parsed configuration: a list of `Host` blocks, includes already inlined.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
    /// Every file read, in order: the main one, then each included one.
    files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
struct Block {
    /// `None` for lines before the first `Host` (they apply to every host) or for `Match`.
    patterns: Option<Vec<String>>,
    applies_to_all: bool,
    /// A `Match` block's criteria, all of which must hold.
    criteria: Option<Vec<Criterion>>,
    options: Vec<(String, String, Origin)>,
}

/// Where an option was given, to name it in an error.
#[derive(Debug, Clone)]
enum Origin {
    /// A file's line (counted from 1).
    File { path: PathBuf, line: usize },
    /// `-o` on the command line, as given.
    CommandLine(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line } => {
                write!(f, "SSH config `{}` line {line}", path.display())
            }
            Origin::CommandLine(option) => write!(f, "`-o {option}`"),
        }
    }
}

/// One condition of a `Match` line, possibly negated with `!`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Criterion {
    negated: bool,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    All,
    /// `final` or `canonical`: true on the second reading only.
    Final,
    Host(Vec<String>),
    OriginalHost(Vec<String>),
    User(Vec<String>),
    LocalUser(Vec<String>),
    /// A shell command that must exit 0 (`%h`, `%p`, `%r`, `%n`, `%u`, `%%` expanded).
    Exec(String),
}

/// Parses the words after `Match`.
fn criteria(words: &[String], origin: &Path, line: usize) -> Result<Vec<Criterion>> {
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("SSH config `{}` line {line}: {why}", origin.display()),
        )
    };
    let mut out = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let (negated, name) = match word.strip_prefix('!') {
            Some(name) => (true, name),
            None => (false, word.as_str()),
        };
        let name = name.to_ascii_lowercase();
        let mut argument = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| bad(format!("`Match {name}` needs an argument")))
        };
        let list = |text: String| text.split(',').map(str::to_owned).collect::<Vec<_>>();
        let test = match name.as_str() {
            "all" => Test::All,
            "final" | "canonical" => Test::Final,
            "host" => Test::Host(list(argument()?)),
            "originalhost" => Test::OriginalHost(list(argument()?)),
            "user" => Test::User(list(argument()?)),
            "localuser" => Test::LocalUser(list(argument()?)),
            "exec" => Test::Exec(argument()?),
            other => {
                return Err(bad(format!(
                    "`Match {other}` is not supported (all, host, originalhost, user, \
                     localuser, exec, final, canonical)"
                )))
            }
        };
        out.push(Criterion { negated, test });
    }
    if out.is_empty() {
        return Err(bad(
            "`Match` needs criteria (`Match all` for every host)".into()
        ));
    }
    Ok(out)
}

/// What `Match` criteria are checked against.
struct Facts<'a> {
    /// The name the user typed.
    original: &'a str,
    /// The host name to connect to, as far as the configuration has set it.
    host: String,
    /// The remote user (given, or as far as the configuration has set it, or the local one).
    user: String,
    port: u16,
    local_user: String,
    second_reading: bool,
}

impl Criterion {
    fn holds(&self, facts: &Facts<'_>) -> bool {
        let any = |patterns: &[String], value: &str| host_matches(patterns, value);
        let result = match &self.test {
            Test::All => true,
            Test::Final => facts.second_reading,
            Test::Host(p) => any(p, &facts.host),
            Test::OriginalHost(p) => any(p, facts.original),
            Test::User(p) => any(p, &facts.user),
            Test::LocalUser(p) => any(p, &facts.local_user),
            Test::Exec(command) => {
                let line = command
                    .replace("%%", "\u{0}")
                    .replace("%h", &facts.host)
                    .replace("%n", facts.original)
                    .replace("%p", &facts.port.to_string())
                    .replace("%r", &facts.user)
                    .replace("%u", &facts.local_user)
                    .replace('\u{0}', "%");
                std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(line)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            }
        };
        result != self.negated
    }
}

/// The name of the user running this process: `$USER`, else the password database's name
/// for this uid (`$USER` is often unset under cron, systemd and containers).
pub(crate) fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default()
}

/// Splits a line into words, honouring double quotes and `Key=Value`.
fn words(line: &str) -> Vec<String> {
    let line = line.trim();
    let (key, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    };
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let mut out = vec![key.to_owned()];
    let mut current = String::new();
    let mut quoted = false;
    let mut has = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    out.push(std::mem::take(&mut current));
                    has = false;
                }
            }
            c => {
                current.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(current);
    }
    out
}

fn expand_tilde(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => reach_core::local::home_dir().join(rest),
        None if path == "~" => reach_core::local::home_dir(),
        None => PathBuf::from(path),
    }
}

/// Paths matching a simple glob (`*` and `?` in the file name part only).
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| wildcard_ignore_ascii_case(&name, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

impl SshConfig {
    /// Reads `path`; a missing file is an error (use [`SshConfig::load_default`] for the
    /// optional `~/.ssh/config`).
    pub fn load(path: &Path) -> Result<SshConfig> {
        let mut config = SshConfig::default();
        config.read_file(path, 0)?;
        Ok(config)
    }

    /// Reads `~/.ssh/config` if it exists; an empty configuration otherwise.
    pub fn load_default() -> Result<SshConfig> {
        let path = reach_core::local::home_dir().join(".ssh").join("config");
        if path.exists() {
            Self::load(&path)
        } else {
            Ok(SshConfig::default())
        }
    }

    /// Parses configuration text (includes resolved relative to `~/.ssh`).
    pub fn parse(text: &str, origin: &Path) -> Result<SshConfig> {
        let mut config = SshConfig::default();
        config.read_text(text, origin, 0)?;
        Ok(config)
    }

    /// Puts command-line options (`ssh -o`: `Keyword=value` or `Keyword value`) before
    /// everything the files say, so that they win; `Host`, `Match` and `Include` cannot be
    /// given this way.
    pub fn with_options(mut self, options: &[String]) -> Result<SshConfig> {
        let mut block = Block {
            patterns: None,
            applies_to_all: true,
            criteria: None,
            options: Vec::new(),
        };
        for option in options {
            let mut words = words(option);
            let key = words.remove(0).to_ascii_lowercase();
            if matches!(key.as_str(), "host" | "match" | "include") || words.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "`-o {option}` is not an SSH option: give `Keyword=value`, such as \
                         `-o ConnectTimeout=5` (Host, Match and Include belong in a file)"
                    ),
                ));
            }
            block
                .options
                .push((key, words.join(" "), Origin::CommandLine(option.clone())));
        }
        self.blocks.insert(0, block);
        Ok(self)
    }

    /// The files this configuration was read from: the main file, then every included file
    /// in the order it was read. A change to any of them can change what [`resolve`] says.
    ///
    /// [`resolve`]: SshConfig::resolve
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn read_file(&mut self, path: &Path, depth: usize) -> Result<()> {
        self.files.push(path.to_path_buf());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read SSH config file `{}`", path.display()), e))?;
        self.read_text(&text, path, depth)
    }

    fn read_text(&mut self, text: &str, origin: &Path, depth: usize) -> Result<()> {
        if depth > 16 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "SSH config `{}`: Include nested more than 16 deep (a loop?)",
                    origin.display()
                ),
            ));
        }
        if self.blocks.is_empty() || depth == 0 {
            self.blocks.push(Block {
                patterns: None,
                applies_to_all: true,
                criteria: None,
                options: Vec::new(),
            });
        }
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = words(line);
            let key = words.remove(0).to_ascii_lowercase();
            match key.as_str() {
                "host" => self.blocks.push(Block {
                    patterns: Some(words),
                    applies_to_all: false,
                    criteria: None,
                    options: Vec::new(),
                }),
                "match" => self.blocks.push(Block {
                    patterns: None,
                    applies_to_all: false,
                    criteria: Some(criteria(&words, origin, number + 1)?),
                    options: Vec::new(),
                }),
                "include" => {
                    for word in words {
                        let path = expand_tilde(&word);
                        let path = if path.is_absolute() {
                            path
                        } else {
                            reach_core::local::home_dir().join(".ssh").join(path)
                        };
                        // The included lines belong to the block that includes them.
                        let block = self.blocks.len() - 1;
                        for file in glob(&path) {
                            if !file.exists() {
                                continue;
                            }
                            let mut inner = SshConfig::default();
                            inner.blocks.push(Block {
                                patterns: self.blocks[block].patterns.clone(),
                                applies_to_all: self.blocks[block].applies_to_all,
                                criteria: self.blocks[block].criteria.clone(),
                                options: Vec::new(),
                            });
                            inner.read_file(&file, depth + 1)?;
                            self.blocks.extend(inner.blocks);
                            self.files.extend(inner.files);
                            // Lines after the Include continue the including block.
                            self.blocks.push(Block {
                                patterns: self.blocks[block].patterns.clone(),
                                applies_to_all: self.blocks[block].applies_to_all,
                                criteria: self.blocks[block].criteria.clone(),
                                options: Vec::new(),
                            });
                        }
                    }
                }
                _ => {
                    let value = words.join(" ");
                    if let Some(block) = self.blocks.last_mut() {
                        block.options.push((
                            key,
                            value,
                            Origin::File {
                                path: origin.to_path_buf(),
                                line: number + 1,
                            },
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The settings for `host` (the name the user typed).
    pub fn resolve(&self, host: &str) -> Result<HostConfig> {
        self.resolve_as(host, None)
    }

    /// The settings for `host` when the remote user is `user` (given on the command line or
    /// in the destination), which `Match user` checks; without it, the configured `User` so
    /// far, else the local user.
    pub fn resolve_as(&self, host: &str, user: Option<&str>) -> Result<HostConfig> {
        let mut out = HostConfig::default();
        let second = self
            .blocks
            .iter()
            .flat_map(|b| b.criteria.iter().flatten())
            .any(|c| c.test == Test::Final);
        let local_user = local_user();
        for second_reading in [false, true] {
            if second_reading && !second {
                break;
            }
            for block in &self.blocks {
                let applies = match (&block.patterns, &block.criteria) {
                    _ if block.applies_to_all => true,
                    (Some(patterns), _) => host_matches(patterns, host),
                    (None, Some(criteria)) => {
                        let facts = Facts {
                            original: host,
                            host: out.host_name.clone().unwrap_or_else(|| host.to_owned()),
                            user: user
                                .map(str::to_owned)
                                .or_else(|| out.user.clone())
                                .unwrap_or_else(|| local_user.clone()),
                            port: out.port.unwrap_or(22),
                            local_user: local_user.clone(),
                            second_reading,
                        };
                        criteria.iter().all(|c| c.holds(&facts))
                    }
                    (None, None) => false,
                };
                if applies {
                    apply(&mut out, block, host)?;
                }
            }
        }
        // Tokens in IdentityFile, as ssh expands them.
        let user = out.user.clone().unwrap_or_default();
        let host_name = out.host_name.clone().unwrap_or_else(|| host.to_owned());
        let port = out.port.unwrap_or(22).to_string();
        let home_dir = reach_core::local::home_dir().to_string_lossy().into_owned();
        for path in &mut out.identity_files {
            let text = path.to_string_lossy();
            if text.contains('%') {
                *path = PathBuf::from(
                    text.replace("%d", &home_dir)
                        .replace("%h", &host_name)
                        .replace("%p", &port)
                        .replace("%r", &user)
                        .replace("%%", "%"),
                );
            }
        }
        Ok(out)
    }
}

/// Applies one block's options: the first value of each keyword wins, identity files and
/// local forwards add up (each once, as `ssh` keeps them).
fn apply(out: &mut HostConfig, block: &Block, host: &str) -> Result<()> {
    for (key, value, origin) in &block.options {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{origin}: `{value}` is not {what}"),
            )
        };
        let seconds = |v: &str| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| bad("a number of seconds"))
        };
        let yes_no = |v: &str| match v.to_ascii_lowercase().as_str() {
            "yes" | "true" => Ok(true),
            "no" | "false" => Ok(false),
            _ => Err(bad("yes or no")),
        };
        match key.as_str() {
            "hostname" if out.host_name.is_none() => {
                out.host_name = Some(value.replace("%h", host))
            }
            "user" if out.user.is_none() => out.user = Some(value.clone()),
            "port" if out.port.is_none() => {
                out.port = Some(value.parse().map_err(|_| bad("a port (1-65535)"))?)
            }
            "certificatefile" => {
                let path = expand_tilde(value);
                if !out.certificate_files.contains(&path) {
                    out.certificate_files.push(path);
                }
            }
            "identityfile" => {
                let path = expand_tilde(value);
                if !out.identity_files.contains(&path) {
                    out.identity_files.push(path);
                }
            }
            "identitiesonly" if out.identities_only.is_none() => {
                out.identities_only = Some(yes_no(value)?)
            }
            "proxycommand" if out.proxy_command.is_none() && out.proxy_jump.is_none() => {
                out.proxy_command = Some(if value.eq_ignore_ascii_case("none") {
                    String::new()
                } else {
                    value.clone()
                })
            }
            "proxyjump" if out.proxy_jump.is_none() && out.proxy_command.is_none() => {
                out.proxy_jump = Some(if value.eq_ignore_ascii_case("none") {
                    Vec::new()
                } else {
                    value.split(',').map(|s| s.trim().to_owned()).collect()
                })
            }
            "serveraliveinterval" if out.server_alive_interval.is_none() => {
                out.server_alive_interval = Some(seconds(value)?)
            }
            "serveralivecountmax" if out.server_alive_count_max.is_none() => {
                out.server_alive_count_max = Some(value.parse().map_err(|_| bad("a count"))?)
            }
            "connecttimeout" if out.connect_timeout.is_none() => {
                out.connect_timeout = Some(seconds(value)?)
            }
            // Unlike most keywords, every LocalForward applies.
            "localforward" => {
                let words: Vec<&str> = value.split_whitespace().collect();
                let [listen, to] = words[..] else {
                    return Err(bad("`[BIND:]PORT HOST:HOSTPORT`"));
                };
                let spec = format!("{listen}:{to}");
                if !out.local_forwards.contains(&spec) {
                    out.local_forwards.push(spec);
                }
            }
            "forwardagent" if out.forward_agent.is_none() => {
                out.forward_agent = Some(value.clone())
            }
            "identityagent" if out.identity_agent.is_none() => {
                out.identity_agent = Some(value.clone())
            }
            "hostkeyalias" if out.host_key_alias.is_none() => {
                out.host_key_alias = Some(value.clone())
            }
            "globalknownhostsfile" if out.global_known_hosts_files.is_none() => {
                out.global_known_hosts_files = Some(if value.eq_ignore_ascii_case("none") {
                    Vec::new()
                } else {
                    value.split_whitespace().map(expand_tilde).collect()
                })
            }
            "userknownhostsfile" if out.user_known_hosts_file.is_none() => {
                out.user_known_hosts_file = value.split_whitespace().next().map(expand_tilde)
            }
            "kexalgorithms" if out.kex_algorithms.is_none() => {
                out.kex_algorithms = Some(algorithm_list(Kind::Kex, value).map_err(|w| bad(&w))?)
            }
            "hostkeyalgorithms" if out.host_key_algorithms.is_none() => {
                out.host_key_algorithms =
                    Some(algorithm_list(Kind::HostKey, value).map_err(|w| bad(&w))?)
            }
            "ciphers" if out.ciphers.is_none() => {
                out.ciphers = Some(algorithm_list(Kind::Cipher, value).map_err(|w| bad(&w))?)
            }
            "macs" if out.macs.is_none() => {
                out.macs = Some(algorithm_list(Kind::Mac, value).map_err(|w| bad(&w))?)
            }
            "stricthostkeychecking" if out.strict_host_key_checking.is_none() => {
                out.strict_host_key_checking = Some(value.to_ascii_lowercase())
            }
            _ => {}
        }
    }
    Ok(())
}

/// An algorithm list as written, once it is known to leave something reach can use.
fn algorithm_list(kind: Kind, value: &str) -> std::result::Result<String, String> {
    algorithms::apply(kind, value).map(|_| value.to_owned())
}

/// `Host` matching: some positive pattern matches and no negated one does.
fn host_matches(patterns: &[String], host: &str) -> bool {
    list_matches(patterns.iter().map(String::as_str), |pattern| {
        wildcard_ignore_ascii_case(pattern, host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SshConfig {
        SshConfig::parse(text, Path::new("test-config")).unwrap()
    }

    #[test]
    fn first_value_wins_and_identity_files_add_up() {
        let config = parse(
            "# comment\n\
             Host web*  !web-old\n  HostName 10.0.0.%h\n  User deploy\n  Port=2222\n  \
             IdentityFile ~/.ssh/web\n\
             Host *\n  User nobody\n  Port 22\n  IdentityFile \"/keys/all keys\"\n  \
             ServerAliveInterval 5\n  ProxyJump bastion,inner\n",
        );
        let web = config.resolve("web1").unwrap();
        assert_eq!(web.host_name.as_deref(), Some("10.0.0.web1"));
        assert_eq!(web.user.as_deref(), Some("deploy"));
        assert_eq!(web.port, Some(2222));
        assert_eq!(web.identity_files.len(), 2);
        assert!(web.identity_files[0].ends_with(".ssh/web"));
        assert_eq!(web.identity_files[1], PathBuf::from("/keys/all keys"));
        assert_eq!(web.server_alive_interval, Some(Duration::from_secs(5)));
        assert_eq!(
            web.proxy_jump,
            Some(vec!["bastion".to_owned(), "inner".to_owned()])
        );
        let old = config.resolve("web-old").unwrap();
        assert_eq!(old.user.as_deref(), Some("nobody"));
        assert_eq!(old.host_name, None);
    }

    #[test]
    fn every_local_forward_that_applies_is_kept() {
        let config = parse(
            "Host db
  LocalForward 5432 127.0.0.1:5432
             Host *
  LocalForward 0.0.0.0:8080 [::1]:80
  LocalForward 5432 127.0.0.1:5432
             Match final
  User u
",
        );
        assert_eq!(
            config.resolve("db").unwrap().local_forwards,
            ["5432:127.0.0.1:5432", "0.0.0.0:8080:[::1]:80"]
        );
        assert_eq!(
            config.resolve("other").unwrap().local_forwards,
            ["0.0.0.0:8080:[::1]:80", "5432:127.0.0.1:5432"]
        );
        let bad = SshConfig::parse(
            "Host x
  LocalForward 5432
",
            Path::new("c"),
        )
        .unwrap()
        .resolve("x")
        .unwrap_err();
        assert!(bad.to_string().contains("line 2"), "{bad}");
    }

    #[test]
    fn global_lines_come_first() {
        let config = parse("User first\nMatch host x\n  User never\nHost x\n  User late\n");
        assert_eq!(config.resolve("x").unwrap().user.as_deref(), Some("first"));
    }

    #[test]
    fn match_blocks_are_evaluated_as_ssh_does() {
        let config = parse(
            "Host web\n  HostName 10.0.0.5\n\
             Match host 10.0.0.*\n  Port 2200\n\
             Match originalhost web !user root\n  IdentityFile ~/.ssh/web\n\
             Match user deploy\n  ConnectTimeout 7\n\
             Match all\n  ServerAliveInterval 9\n",
        );
        let web = config.resolve_as("web", Some("deploy")).unwrap();
        assert_eq!(web.host_name.as_deref(), Some("10.0.0.5"));
        assert_eq!(
            web.port,
            Some(2200),
            "Match host sees the HostName set before it"
        );
        assert_eq!(
            web.identity_files,
            vec![reach_core::local::home_dir().join(".ssh/web")]
        );
        assert_eq!(web.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(web.server_alive_interval, Some(Duration::from_secs(9)));
        let root = config.resolve_as("web", Some("root")).unwrap();
        assert!(root.identity_files.is_empty(), "!user root");
        assert_eq!(root.connect_timeout, None);
        let other = config.resolve_as("db", None).unwrap();
        assert_eq!((other.port, other.host_name), (None, None));
        assert_eq!(other.server_alive_interval, Some(Duration::from_secs(9)));
    }

    #[test]
    fn match_user_sees_the_configured_user_and_localuser_this_one() {
        let me = local_user();
        assert!(!me.is_empty(), "this uid has a name");
        let config = parse(&format!(
            "Host a\n  User alice\nMatch user alice\n  Port 1001\n\
             Match localuser {me}\n  ConnectTimeout 3\n"
        ));
        let a = config.resolve("a").unwrap();
        assert_eq!(a.port, Some(1001));
        assert_eq!(a.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.resolve_as("a", Some("bob")).unwrap().port, None);
    }

    #[test]
    fn match_exec_runs_the_command_with_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("on-vpn-gw.example");
        let config = parse(&format!(
            "Host gw.example\n  User u1\n\
             Match exec \"test -e {}/on-vpn-%h\"\n  ProxyJump none\n\
             Host *\n  ProxyJump bastion\n",
            dir.path().display()
        ));
        assert_eq!(
            config.resolve("gw.example").unwrap().proxy_jump,
            Some(vec!["bastion".to_owned()])
        );
        std::fs::write(&flag, "").unwrap();
        assert_eq!(
            config.resolve("gw.example").unwrap().proxy_jump,
            Some(Vec::new())
        );
    }

    #[test]
    fn proxy_jump_and_proxy_command_exclude_each_other() {
        let config = parse(
            "Host a\n  ProxyCommand nc %h %p\n  ProxyJump j\n\
             Host b\n  ProxyJump j\nHost *\n  ProxyCommand nc %h %p\n\
             Host c\n  ProxyCommand none\n",
        );
        let a = config.resolve("a").unwrap();
        assert_eq!(
            (a.proxy_command.as_deref(), a.proxy_jump),
            (Some("nc %h %p"), None)
        );
        let b = config.resolve("b").unwrap();
        assert_eq!(
            (b.proxy_command, b.proxy_jump),
            (None, Some(vec!["j".to_owned()]))
        );
        assert_eq!(
            config.resolve("c").unwrap().proxy_command.as_deref(),
            Some("nc %h %p")
        );
        let none = parse("Host c\n  ProxyCommand none\nHost *\n  ProxyCommand nc %h %p\n");
        assert_eq!(
            none.resolve("c").unwrap().proxy_command.as_deref(),
            Some("")
        );
    }

    #[test]
    fn match_final_applies_on_a_second_reading() {
        // Before the HostName is known, a plain `Match host` cannot see it; `final` can.
        let config = parse(
            "Match final host real.example\n  Port 2222\n\
             Match host real.example\n  User never\n\
             Host alias\n  HostName real.example\n  IdentityFile ~/.ssh/a\n",
        );
        let alias = config.resolve("alias").unwrap();
        assert_eq!(alias.port, Some(2222));
        // The second reading is of every block, with what the first one found.
        assert_eq!(alias.user.as_deref(), Some("never"));
        assert_eq!(
            alias.identity_files,
            vec![reach_core::local::home_dir().join(".ssh/a")],
            "not twice"
        );
    }

    #[test]
    fn bad_match_lines_name_the_file_and_line() {
        for (text, says) in [
            ("Host a\nMatch tagged x\n", "tagged"),
            ("Match host\n", "needs an argument"),
            ("Match\n", "needs criteria"),
        ] {
            let err = SshConfig::parse(text, Path::new("test-config")).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(says), "{err}");
            assert!(err.to_string().contains("test-config"), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_file_and_line() {
        let config = parse("Host a\n  Port banana\n");
        let err = config.resolve("a").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("banana"), "{err}");
    }

    #[test]
    fn includes_are_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.conf"), "Host a\n  Port 1000\n").unwrap();
        std::fs::write(dir.path().join("b.conf"), "Host b\n  Port 2000\n").unwrap();
        let text = format!(
            "Include {}/*.conf\nHost *\n  Port 3000\n",
            dir.path().display()
        );
        let config = parse(&text);
        assert_eq!(config.resolve("a").unwrap().port, Some(1000));
        assert_eq!(config.resolve("b").unwrap().port, Some(2000));
        assert_eq!(config.resolve("c").unwrap().port, Some(3000));
        assert_eq!(
            config.files(),
            [dir.path().join("a.conf"), dir.path().join("b.conf")],
            "the files read, in order (the parsed text itself is no file)"
        );
    }

    #[test]
    fn quoted_words() {
        assert_eq!(
            words("IdentityFile \"a b\" c"),
            ["IdentityFile", "a b", "c"]
        );
        assert_eq!(words("Port=22"), ["Port", "22"]);
        assert_eq!(words("Port = 22"), ["Port", "22"]);
    }
}
