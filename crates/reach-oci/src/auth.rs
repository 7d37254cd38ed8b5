//! Registry credentials from `~/.docker/config.json` (`auths.<registry>.auth`, base64 of
//! `user:password`), as the docker CLI stores them; anonymous otherwise (the registry's
//! token service is then asked for an anonymous pull token, as it is for credentials).

use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use reach_core::{Error, ErrorKind, Result};

/// The docker CLI's configuration file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The credentials `config` (the docker CLI's file, if it exists) holds for `registry`.
pub fn credentials(config: Option<&Path>, registry: &str) -> Result<RegistryAuth> {
    let Some(path) = config.filter(|p| p.exists()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: {why} (fix or remove the entry for `{registry}`)",
                path.display()
            ),
        )
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read `{}`", path.display()), e))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let auths = config.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|auths| {
        auths.iter().find(|(key, _)| {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            key.split('/').next() == Some(registry)
        })
    });
    let Some(encoded) = entry
        .and_then(|(_, e)| e.get("auth"))
        .and_then(|a| a.as_str())
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("its `auth` is not base64 ({e})")))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("its `auth` is not UTF-8".into()))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| bad("its `auth` is not `user:password`".into()))?;
    Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn credentials_come_from_the_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg.example:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#,
        )
        .unwrap();
        match credentials(Some(&path), "reg.example:5000").unwrap() {
            RegistryAuth::Basic(user, password) => {
                assert_eq!((user.as_str(), password.as_str()), ("alice", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            credentials(Some(&path), "other:1").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(&path, r#"{"auths":{"reg.example:5000":{"auth":"!!"}}}"#).unwrap();
        let err = credentials(Some(&path), "reg.example:5000").unwrap_err();
        assert!(err.message().contains("base64"), "{err}");
    }
}
