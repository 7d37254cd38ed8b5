//! Which adapter serves a scheme, and whether it may run: `[plugins.<scheme>]` of the user's
//! configuration, else `reach-backend-<scheme>` on `PATH`; an adapter without a pin runs only
//! when the user allowed unpinned adapters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reach_core::{Error, ErrorKind, Result};

use crate::config::{check_scheme, user_config_path, PluginSettings};
use crate::verified::{parse_digest, Trust};

/// Where an adapter was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[plugins.<scheme>]` in this configuration file.
    Config(PathBuf),
    /// `reach-backend-<scheme>` on `PATH`.
    SearchPath,
}

/// An adapter for one scheme, found and judged (not yet opened or run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// The scheme it serves (`lxd`).
    pub scheme: String,
    /// Its file.
    pub path: PathBuf,
    /// Its pin, or `Unpinned`.
    pub trust: Trust,
    /// Where it was found.
    pub source: Source,
    /// Arguments before reach's own.
    pub args: Vec<String>,
    /// Environment variables set for it.
    pub env: BTreeMap<String, String>,
}

/// The file name of the adapter for `scheme`.
pub fn adapter_name(scheme: &str) -> String {
    format!("reach-backend-{scheme}")
}

/// The first executable `name` in the directories of `PATH`.
pub fn search_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn how_to_pin(scheme: &str, path: &Path) -> String {
    let config = user_config_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.config/reach/reach.toml".to_owned());
    format!(
        "pin it with `reach plugin pin {scheme} {}` (which records its SHA-256 in {config}), \
         or allow unpinned adapters with --allow-unpinned-plugin or `[plugins] allow_unpinned \
         = true` there",
        path.display()
    )
}

/// The adapter for `scheme`, refused when it has no pin and unpinned adapters are not
/// allowed (`allow_unpinned`, or the configuration's `[plugins] allow_unpinned`).
pub fn resolve(scheme: &str, settings: &PluginSettings, allow_unpinned: bool) -> Result<Adapter> {
    let adapter = find(scheme, settings)?;
    may_run(&adapter, settings, allow_unpinned)?;
    Ok(adapter)
}

/// Whether `adapter` may run at all: pinned, or unpinned adapters allowed (`allow_unpinned`,
/// or the configuration's `[plugins] allow_unpinned`). Its pin is checked when it is opened.
pub fn may_run(adapter: &Adapter, settings: &PluginSettings, allow_unpinned: bool) -> Result<()> {
    if adapter.trust == Trust::Unpinned && !(allow_unpinned || settings.allow_unpinned) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "adapter `{}` for `{}://` is not pinned, and reach runs an adapter only when \
                 its SHA-256 matches a pin: {}",
                adapter.path.display(),
                adapter.scheme,
                how_to_pin(&adapter.scheme, &adapter.path)
            ),
        ));
    }
    Ok(())
}

/// The adapter for `scheme` and its pin, whether or not it may run.
pub fn find(scheme: &str, settings: &PluginSettings) -> Result<Adapter> {
    check_scheme(scheme)?;
    let name = adapter_name(scheme);
    let configured = settings.adapters.get(scheme);
    let source = match (configured, &settings.file) {
        (Some(_), Some(file)) => Source::Config(file.clone()),
        _ => Source::SearchPath,
    };
    let path = match configured.and_then(|c| c.path.clone()) {
        Some(path) => path,
        None => search_path(&name).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no backend serves `{scheme}://`: reach has no built-in one, and no adapter \
                     `{name}` is configured ([plugins.{scheme}] path) or on PATH. Install one, \
                     then pin it: `reach plugin pin {scheme} /path/to/{name}`"
                ),
            )
        })?,
    };
    let trust = match configured.and_then(|c| c.sha256.as_deref()) {
        Some(pin) => Trust::Pinned(parse_digest(pin).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("[plugins.{scheme}] sha256: {}", e.message()),
            )
        })?),
        None => Trust::Unpinned,
    };
    Ok(Adapter {
        scheme: scheme.to_owned(),
        path,
        trust,
        source,
        args: configured.map(|c| c.args.clone()).unwrap_or_default(),
        env: configured.map(|c| c.env.clone()).unwrap_or_default(),
    })
}

/// Every adapter the user could use: the configured ones, then `reach-backend-*` on `PATH`
/// (the first of each name), by scheme.
pub fn all(settings: &PluginSettings) -> Vec<Result<Adapter>> {
    let mut schemes: Vec<String> = settings.adapters.keys().cloned().collect();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(scheme) = name.strip_prefix("reach-backend-") {
                    if check_scheme(scheme).is_ok() && !schemes.iter().any(|s| s == scheme) {
                        schemes.push(scheme.to_owned());
                    }
                }
            }
        }
    }
    schemes.sort();
    schemes.iter().map(|s| find(s, settings)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::AdapterConfig;

    fn settings(sha256: Option<&str>, allow: bool) -> PluginSettings {
        let mut adapters = BTreeMap::new();
        adapters.insert(
            "demo".to_owned(),
            AdapterConfig {
                path: Some(PathBuf::from("/opt/reach-backend-demo")),
                sha256: sha256.map(str::to_owned),
                args: vec!["--fast".into()],
                env: BTreeMap::new(),
            },
        );
        PluginSettings {
            file: Some(PathBuf::from("/home/u/.config/reach/reach.toml")),
            allow_unpinned: allow,
            adapters,
        }
    }

    #[test]
    fn an_unpinned_adapter_needs_the_users_opt_in() {
        let err = resolve("demo", &settings(None, false), false).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::PermissionDenied));
        assert!(err.message().contains("/opt/reach-backend-demo"), "{err}");
        assert!(err.message().contains("reach plugin pin demo"), "{err}");
        assert!(err.message().contains("--allow-unpinned-plugin"), "{err}");
        assert!(resolve("demo", &settings(None, false), true).is_ok());
        assert!(resolve("demo", &settings(None, true), false).is_ok());
    }

    #[test]
    fn a_pinned_adapter_resolves_with_its_pin_args_and_source() {
        let pin = "ab".repeat(32);
        let adapter = resolve("demo", &settings(Some(&pin), false), false).unwrap();
        assert_eq!(adapter.trust, Trust::Pinned([0xab; 32]));
        assert_eq!(adapter.args, vec!["--fast".to_owned()]);
        assert_eq!(
            adapter.source,
            Source::Config(PathBuf::from("/home/u/.config/reach/reach.toml"))
        );
        let err = resolve("demo", &settings(Some("nope"), false), false).unwrap_err();
        assert!(err.message().contains("[plugins.demo] sha256"), "{err}");
        let err = resolve("Bad_Scheme", &settings(None, true), true).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidInput));
    }
}
