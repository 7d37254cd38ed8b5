//! OpenSSH client configuration (`~/.ssh/config`, or the file given with `-F`).
//!
//! Read as `ssh` reads it: the file is scanned top to bottom, and for each keyword the
//! first value from a matching `Host` block wins (`IdentityFile` accumulates). Supported:
//! `Host` patterns (`*`, `?`, `!negation`, several per line), `Include` (globs, relative to
//! `~/.ssh`), `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`, `ProxyJump`,
//! `ServerAliveInterval`, `ServerAliveCountMax`, `ConnectTimeout`, `UserKnownHostsFile`,
//! `StrictHostKeyChecking`. Other keywords are ignored; a `Match` block is skipped whole
//! (its conditions are not evaluated).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};

use crate::known_hosts::wildcard_match;

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
    /// Offer only the identity files, not the agent's other keys.
    pub identities_only: Option<bool>,
    /// Jump hosts, in order (`none` gives an empty list).
    pub proxy_jump: Option<Vec<String>>,
    /// Keepalive interval (`0` disables).
    pub server_alive_interval: Option<Duration>,
    /// Unanswered keepalives before the connection counts as dead.
    pub server_alive_count_max: Option<u32>,
    /// TCP connect (and handshake) limit.
    pub connect_timeout: Option<Duration>,
    /// known_hosts files (the first one is used).
    pub user_known_hosts_file: Option<PathBuf>,
    /// `accept-new` (or `no`/`off`) makes unknown host keys acceptable.
    pub strict_host_key_checking: Option<String>,
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
    /// `None` for lines before the first `Host` (they apply to every host) or for `Match`
    /// (which never applies).
    patterns: Option<Vec<String>>,
    applies_to_all: bool,
    options: Vec<(String, String, PathBuf, usize)>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
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
        Some(rest) => home().join(rest),
        None if path == "~" => home(),
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
                .filter(|e| wildcard_match(&name, &e.file_name().to_string_lossy()))
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
        let path = home().join(".ssh").join("config");
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
                    options: Vec::new(),
                }),
                "match" => self.blocks.push(Block {
                    patterns: None,
                    applies_to_all: false,
                    options: Vec::new(),
                }),
                "include" => {
                    for word in words {
                        let path = expand_tilde(&word);
                        let path = if path.is_absolute() {
                            path
                        } else {
                            home().join(".ssh").join(path)
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
                                options: Vec::new(),
                            });
                            inner.read_file(&file, depth + 1)?;
                            self.blocks.extend(inner.blocks);
                            self.files.extend(inner.files);
                            // Lines after the Include continue the including block.
                            self.blocks.push(Block {
                                patterns: self.blocks[block].patterns.clone(),
                                applies_to_all: self.blocks[block].applies_to_all,
                                options: Vec::new(),
                            });
                        }
                    }
                }
                _ => {
                    let value = words.join(" ");
                    if let Some(block) = self.blocks.last_mut() {
                        block
                            .options
                            .push((key, value, origin.to_path_buf(), number + 1));
                    }
                }
            }
        }
        Ok(())
    }

    /// The settings for `host` (the name the user typed).
    pub fn resolve(&self, host: &str) -> Result<HostConfig> {
        let mut out = HostConfig::default();
        for block in &self.blocks {
            let applies = block.applies_to_all
                || block
                    .patterns
                    .as_ref()
                    .is_some_and(|patterns| host_matches(patterns, host));
            if !applies {
                continue;
            }
            for (key, value, file, line) in &block.options {
                let bad = |what: &str| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "SSH config `{}` line {line}: `{value}` is not {what}",
                            file.display()
                        ),
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
                    "identityfile" => out.identity_files.push(expand_tilde(value)),
                    "identitiesonly" if out.identities_only.is_none() => {
                        out.identities_only = Some(yes_no(value)?)
                    }
                    "proxyjump" if out.proxy_jump.is_none() => {
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
                        out.server_alive_count_max =
                            Some(value.parse().map_err(|_| bad("a count"))?)
                    }
                    "connecttimeout" if out.connect_timeout.is_none() => {
                        out.connect_timeout = Some(seconds(value)?)
                    }
                    "userknownhostsfile" if out.user_known_hosts_file.is_none() => {
                        out.user_known_hosts_file =
                            value.split_whitespace().next().map(expand_tilde)
                    }
                    "stricthostkeychecking" if out.strict_host_key_checking.is_none() => {
                        out.strict_host_key_checking = Some(value.to_ascii_lowercase())
                    }
                    _ => {}
                }
            }
        }
        // Tokens in IdentityFile, as ssh expands them.
        let user = out.user.clone().unwrap_or_default();
        let host_name = out.host_name.clone().unwrap_or_else(|| host.to_owned());
        let port = out.port.unwrap_or(22).to_string();
        let home_dir = home().to_string_lossy().into_owned();
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

/// `Host` matching: some positive pattern matches and no negated one does.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if wildcard_match(negated, host) => return false,
            Some(_) => {}
            None if wildcard_match(pattern, host) => matched = true,
            None => {}
        }
    }
    matched
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
    fn global_lines_and_match_blocks() {
        let config = parse("User first\nMatch host x\n  User never\nHost x\n  User late\n");
        assert_eq!(config.resolve("x").unwrap().user.as_deref(), Some("first"));
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
