//! Where a fan-out runs: destinations from the command line, from `-H` host files and from
//! `@group`s of the inventory (`reach.toml`), each group with its own connection defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reach::fanout::Target;
use reach::{ConnectOptions, Destination, Error, ErrorKind, Registry, Result};
use serde::Deserialize;

/// The inventory file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Named groups of destinations.
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// `[connections]`: the connection daemon.
    #[serde(default)]
    pub connections: Connections,
    /// `[plugins]`: read by `reach-plugin` from the user's own configuration only; an
    /// inventory found elsewhere (the working directory) is never asked for adapters.
    #[serde(default, rename = "plugins")]
    _plugins: Option<serde::de::IgnoredAny>,
}

/// `[connections]`: whether single-destination calls reuse warm connections, and for how long
/// an unused one is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// `false` connects directly on every call.
    pub reuse: Option<bool>,
    /// How long an unused connection is kept (`30s`, `5m`).
    pub idle: Option<String>,
}

/// Whether to go through the connection daemon, and its idle time: `None` when `--no-reuse`,
/// `REACH_NO_REUSE` (any value but `0` or empty) or `[connections] reuse = false` says no.
pub fn reuse(no_reuse: bool, inventory: Option<&Path>) -> Result<Option<std::time::Duration>> {
    let env_says_no = std::env::var("REACH_NO_REUSE").is_ok_and(|v| !v.is_empty() && v != "0");
    if no_reuse || env_says_no {
        return Ok(None);
    }
    let Some(path) = self::path(inventory) else {
        return Ok(Some(crate::warm::DEFAULT_IDLE));
    };
    let config = load(&path)?.connections;
    if config.reuse == Some(false) {
        return Ok(None);
    }
    match config.idle {
        None => Ok(Some(crate::warm::DEFAULT_IDLE)),
        Some(text) => crate::cli::parse_duration(&text).map(Some).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the inventory `{}`: [connections] idle: {why}",
                    path.display()
                ),
            )
        }),
    }
}

/// `[groups.NAME]`: destinations and the settings they share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Destinations, as on the command line.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Other groups whose destinations belong to this one too.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SSH: the user, unless a destination names one.
    pub user: Option<String>,
    /// SSH: the port, unless a destination names one.
    pub port: Option<u16>,
    /// SSH: the private key.
    pub identity: Option<PathBuf>,
    /// SSH: the known_hosts file.
    pub known_hosts: Option<PathBuf>,
    /// SSH: jump hosts, comma-separated.
    pub jump: Option<String>,
}

/// Where the inventory is: `--inventory`, else `$REACH_INVENTORY`, else `./reach.toml`, else
/// `~/.config/reach/reach.toml`; `None` when none exists (and none was named).
pub fn path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_owned());
    }
    if let Some(env) = std::env::var_os("REACH_INVENTORY").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(env));
    }
    let here = PathBuf::from("reach.toml");
    if here.is_file() {
        return Some(here);
    }
    let home = std::env::var_os("HOME")?;
    let user = Path::new(&home).join(".config/reach/reach.toml");
    user.is_file().then_some(user)
}

/// Reads the inventory at `path`.
pub fn load(path: &Path) -> Result<Inventory> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!(
                "reading the inventory `{}` (see --inventory)",
                path.display()
            ),
            e,
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("the inventory `{}`: {e}", path.display()),
        )
    })
}

/// Reads a `-H` file: one destination per line; blank lines and `#` comments are skipped.
pub fn host_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the host file `{}`", path.display()), e))?;
    Ok(parse_host_lines(&text))
}

fn parse_host_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| match line.find('#') {
            Some(at) => &line[..at],
            None => line,
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Builds the target list: every word (`@group` expanded from the inventory), then every
/// `-H` file's lines, each destination once, in order.
pub fn targets(
    words: &[String],
    host_files: &[PathBuf],
    inventory: Option<&Path>,
    base: &ConnectOptions,
) -> Result<Vec<Target>> {
    let plain = Arc::new(Registry::with_options(base));
    let mut loaded: Option<(PathBuf, Inventory)> = None;
    let mut out: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |name: &str, registry: &Arc<Registry>| -> Result<()> {
        if seen.insert(name.to_owned()) {
            let destination = Destination::parse(name)?;
            out.push(Target::new(name, destination, registry.clone()));
        }
        Ok(())
    };
    for word in words {
        let Some(group) = word.strip_prefix('@') else {
            add(word, &plain)?;
            continue;
        };
        if loaded.is_none() {
            let Some(file) = path(inventory) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "`{word}` names a group, but there is no inventory: write ./reach.toml \
                         or ~/.config/reach/reach.toml, or pass --inventory FILE"
                    ),
                ));
            };
            loaded = Some((file.clone(), load(&file)?));
        }
        let Some((file, inv)) = loaded.as_ref() else {
            continue;
        };
        for (_, group) in expand(inv, file, group)? {
            let registry = Arc::new(Registry::with_options(&with_group(base, group)));
            for host in &group.hosts {
                add(host, &registry)?;
            }
        }
    }
    for file in host_files {
        for host in host_file(file)? {
            add(&host, &plain)?;
        }
    }
    Ok(out)
}

/// `name` and the groups it takes in (depth first, each once).
fn expand<'a>(inv: &'a Inventory, file: &Path, name: &str) -> Result<Vec<(&'a str, &'a Group)>> {
    let mut found = Vec::new();
    let mut stack = vec![name.to_owned()];
    let mut visited = std::collections::HashSet::new();
    while let Some(next) = stack.pop() {
        if !visited.insert(next.clone()) {
            continue;
        }
        let Some((key, group)) = inv.groups.get_key_value(&next) else {
            let known: Vec<&str> = inv.groups.keys().map(String::as_str).collect();
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no group `{next}` in the inventory `{}` (it has: {})",
                    file.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        found.push((key.as_str(), group));
        stack.extend(group.groups.iter().rev().cloned());
    }
    Ok(found)
}

/// `base` with a group's settings over it.
fn with_group(base: &ConnectOptions, group: &Group) -> ConnectOptions {
    let mut options = base.clone();
    let ssh = &mut options.ssh;
    if group.user.is_some() {
        ssh.user = group.user.clone();
    }
    if group.port.is_some() {
        ssh.port = group.port;
    }
    if let Some(identity) = &group.identity {
        ssh.identity = Some(tilde(identity));
    }
    if let Some(known) = &group.known_hosts {
        ssh.known_hosts = Some(tilde(known));
    }
    if let Some(jump) = &group.jump {
        ssh.proxy_jump = Some(jump.split(',').map(|s| s.trim().to_owned()).collect());
    }
    options
}

fn tilde(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => Path::new(&home).join(rest),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_skip_blanks_and_comments() {
        let text = "# lab\nweb1\n\n  web2   # the second\n#db\ndocker://app\n";
        assert_eq!(parse_host_lines(text), ["web1", "web2", "docker://app"]);
    }

    #[test]
    fn groups_take_in_groups_once_and_name_what_is_missing() {
        let inv: Inventory = toml::from_str(
            "[groups.web]\nhosts = [\"a\", \"b\"]\nuser = \"deploy\"\n\
             [groups.db]\nhosts = [\"c\"]\n\
             [groups.all]\ngroups = [\"web\", \"db\", \"web\"]\n",
        )
        .unwrap_or_default();
        let names: Vec<&str> = expand(&inv, Path::new("r.toml"), "all")
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["all", "web", "db"]);
        let err = expand(&inv, Path::new("r.toml"), "nope").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("no group `nope`"), "{message}");
        assert!(message.contains("all, db, web"), "{message}");
    }

    #[test]
    fn a_typo_in_the_inventory_is_named() {
        let err = toml::from_str::<Inventory>("[groups.web]\nhostz = [\"a\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("hostz"), "{err}");
    }
}
