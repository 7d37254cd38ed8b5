//! What the gateway keeps between runs, in its state directory: the host key (generated on
//! first start, so clients' known_hosts entries stay valid across restarts) and the instance
//! id that labels its containers (so the next start finds what a crash left behind).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use reach_core::{Error, ErrorKind, Result};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

/// The host key's file name in the state directory.
pub const HOST_KEY: &str = "ssh_host_ed25519_key";
const INSTANCE: &str = "instance-id";

/// Creates the state directory (0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::io(
                format!("creating the state directory `{}`", dir.display()),
                e,
            )
        })
}

/// Loads the host key, generating and saving it (private 0600, public beside it) on first
/// start.
pub fn host_key(dir: &Path) -> Result<PrivateKey> {
    let path = dir.join(HOST_KEY);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o077)
                .unwrap_or(0);
            if mode != 0 {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "the host key `{}` is readable by others (chmod 600 it)",
                        path.display()
                    ),
                ));
            }
            PrivateKey::from_openssh(text.trim()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "the host key `{}` is not an OpenSSH private key ({e}); move it away \
                         to have a new one generated",
                        path.display()
                    ),
                )
            })
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => {
            let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
                .map_err(|e| Error::new(ErrorKind::Io, format!("generating a host key: {e}")))?;
            let private = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| Error::new(ErrorKind::Io, format!("encoding the host key: {e}")))?;
            let public = key
                .public_key()
                .to_openssh()
                .map_err(|e| Error::new(ErrorKind::Io, format!("encoding the host key: {e}")))?;
            write_new(&path, private.as_bytes(), 0o600)?;
            write_new(
                &dir.join(format!("{HOST_KEY}.pub")),
                format!("{public}\n").as_bytes(),
                0o644,
            )?;
            Ok(key)
        }
        Err(e) => Err(Error::io(
            format!("reading the host key `{}`", path.display()),
            e,
        )),
    }
}

/// The instance id: the configured one, else the one kept in the state directory, else a new
/// random one (saved).
pub fn instance_id(dir: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = dir.join(INSTANCE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Ok(_) | Err(_) => {
            let mut raw = [0u8; 6];
            crate::auth::getrandom(&mut raw)?;
            let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_new(&path, format!("{id}\n").as_bytes(), 0o600)?;
            Ok(id)
        }
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let fail = |e| Error::io(format!("writing `{}`", path.display()), e);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
