//! Where adapters and their pins come from: `[plugins]` in the user's own configuration,
//! `$XDG_CONFIG_HOME/reach/reach.toml` (else `~/.config/reach/reach.toml`), and nowhere
//! else. A `reach.toml` in the working directory is never read for plugins: a cloned
//! repository must not be able to name a program for reach to run.
//!
//! ```toml
//! [plugins]
//! allow_unpinned = false          # run adapters found on PATH without a pin (default: no)
//!
//! [plugins.lxd]
//! path = "/usr/local/bin/reach-backend-lxd"   # default: reach-backend-lxd on PATH
//! sha256 = "3f5a…"                             # `reach plugin pin lxd` writes it
//! args = ["--project", "default"]
//! env = { LXD_REMOTE = "local" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reach_core::{Error, ErrorKind, Result};
use serde::Deserialize;

/// One adapter's entry, `[plugins.<scheme>]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// The adapter's file (default: `reach-backend-<scheme>` on `PATH`).
    pub path: Option<PathBuf>,
    /// Its pinned SHA-256, 64 hex digits.
    pub sha256: Option<String>,
    /// Arguments given to it before reach's own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct PluginsSection {
    #[serde(default)]
    allow_unpinned: bool,
    #[serde(flatten)]
    adapters: BTreeMap<String, AdapterConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    plugins: PluginsSection,
}

/// The plugin settings of the user's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginSettings {
    /// The file they were read from (`None`: there is none).
    pub file: Option<PathBuf>,
    /// `[plugins] allow_unpinned`.
    pub allow_unpinned: bool,
    /// `[plugins.<scheme>]`, by scheme.
    pub adapters: BTreeMap<String, AdapterConfig>,
}

/// The user's own configuration file: `$XDG_CONFIG_HOME/reach/reach.toml`, else
/// `$HOME/.config/reach/reach.toml`.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| Path::new(&home).join(".config"))
        })?;
    Some(base.join("reach").join("reach.toml"))
}

impl PluginSettings {
    /// The settings in the user's configuration (empty when it has none).
    pub fn load_user() -> Result<PluginSettings> {
        match user_config_path() {
            Some(path) if path.is_file() => PluginSettings::load(&path),
            _ => Ok(PluginSettings::default()),
        }
    }

    /// The settings in the file at `path`.
    pub fn load(path: &Path) -> Result<PluginSettings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read `{}`", path.display()), e))?;
        let file: File = toml::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("`{}`: {}", path.display(), e.message()),
            )
        })?;
        for scheme in file.plugins.adapters.keys() {
            check_scheme(scheme).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("`{}`: [plugins.{scheme}]: {}", path.display(), e.message()),
                )
            })?;
        }
        Ok(PluginSettings {
            file: Some(path.to_owned()),
            allow_unpinned: file.plugins.allow_unpinned,
            adapters: file.plugins.adapters,
        })
    }
}

/// A scheme as URLs write them (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`),
/// lower case.
pub fn check_scheme(scheme: &str) -> Result<()> {
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "`{scheme}` is not a scheme: a lower-case letter, then letters, digits, `+`, `-` \
                 or `.`"
            ),
        ))
    }
}

/// Records `[plugins.<scheme>] path` and `sha256` in the configuration file at `config`
/// (made if missing), keeping everything else in it as it was written.
pub fn write_pin(config: &Path, scheme: &str, adapter: &Path, digest: &[u8; 32]) -> Result<()> {
    check_scheme(scheme)?;
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => String::new(),
        Err(e) => return Err(Error::io(format!("read `{}`", config.display()), e)),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{}`: {}", config.display(), e.message()),
        )
    })?;
    let plugins = doc
        .entry("plugins")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("`{}`: `plugins` is not a table", config.display()),
            )
        })?;
    let entry = plugins
        .entry(scheme)
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_mut()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("`{}`: `plugins.{scheme}` is not a table", config.display()),
            )
        })?;
    entry["path"] = toml_edit::value(adapter.display().to_string());
    entry["sha256"] = toml_edit::value(crate::hex(digest));
    if let Some(dir) = config.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create `{}`", dir.display()), e))?;
    }
    // Written beside and renamed over, so that a failure leaves the old file whole.
    let staging = config.with_extension("toml.reach-part");
    std::fs::write(&staging, doc.to_string())
        .map_err(|e| Error::io(format!("write `{}`", staging.display()), e))?;
    std::fs::rename(&staging, config)
        .map_err(|e| Error::io(format!("replace `{}`", config.display()), e))
}
