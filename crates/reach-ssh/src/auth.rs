//! Client authentication in `ssh`'s order: the explicit key, the agent, the config's
//! identity files, the default key files, then a password.
//!
//! Secrets (key text, passphrases, passwords) live in [`Zeroizing`] buffers, are wiped when
//! dropped, and never appear in an error message or a `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reach_core::{Error, ErrorKind, Result};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::{client, MethodKind, MethodSet};
use zeroize::Zeroizing;

use crate::hop::Hop;
use crate::SshOptions;
use reach_core::local::home_dir;

type Handle = client::Handle<crate::HostKeyCheck>;

/// Whether `-i` holds the key itself rather than a file name.
pub(crate) fn is_key_text(identity: &Path) -> bool {
    identity
        .to_string_lossy()
        .trim_start()
        .starts_with("-----BEGIN")
}

/// Where each attempt got to, for the final error.
struct Attempts<'a> {
    hop: &'a Hop,
    problems: Vec<String>,
    /// What the server said it still accepts, once it said so.
    methods: Option<MethodSet>,
}

enum Outcome {
    Success,
    Refused,
}

impl Attempts<'_> {
    fn broken(&self, e: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorKind::SessionDropped,
            format!(
                "the connection to `{}` broke during authentication: {e}",
                self.hop.addr()
            ),
        )
    }

    fn record(&mut self, result: client::AuthResult, what: String) -> Outcome {
        match result {
            client::AuthResult::Success => {
                tracing::info!(
                    "authenticated as `{}` on {}",
                    self.hop.user,
                    self.hop.addr()
                );
                Outcome::Success
            }
            client::AuthResult::Failure {
                remaining_methods, ..
            } => {
                tracing::info!(
                    "{what}; the server accepts: {}",
                    method_names(&remaining_methods)
                );
                self.methods = Some(remaining_methods);
                self.problems.push(what);
                Outcome::Refused
            }
        }
    }

    fn allows(&self, method: MethodKind) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(&method))
    }
}

/// `publickey, password`: what a server still accepts.
fn method_names(methods: &MethodSet) -> String {
    methods
        .iter()
        .map(|k| <&str>::from(k).to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The signature hash the server takes for RSA keys (`None`: the old SHA-1 one, or not RSA).
async fn rsa_hash(handle: &Handle) -> Option<russh::keys::HashAlg> {
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

/// Reads a private key (a file, or the key text), asking for its passphrase if it has one.
fn load_key(source: &Path, options: &SshOptions) -> std::result::Result<PrivateKey, String> {
    let (text, name) = if is_key_text(source) {
        (
            Zeroizing::new(source.to_string_lossy().into_owned()),
            "the key given with -i".to_owned(),
        )
    } else {
        let text = std::fs::read_to_string(source)
            .map_err(|e| format!("`{}` could not be read: {e}", source.display()))?;
        (Zeroizing::new(text), format!("`{}`", source.display()))
    };
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let passphrase = options.passphrase.clone().or_else(|| {
                options
                    .prompt
                    .as_ref()
                    .and_then(|ask| ask(&format!("Enter passphrase for key {name}: ")))
            });
            let Some(passphrase) = passphrase else {
                return Err(format!(
                    "{name} is encrypted and no passphrase was given (set REACH_SSH_PASSPHRASE \
                     or run on a terminal to be asked)"
                ));
            };
            russh::keys::decode_secret_key(&text, Some(passphrase.as_str()))
                .map_err(|_| format!("{name}: wrong passphrase"))
        }
        Err(e) => Err(format!(
            "{name} is not a private key this client reads: {e}"
        )),
    }
}

async fn try_key(
    handle: &mut Handle,
    attempts: &mut Attempts<'_>,
    source: &Path,
    options: &SshOptions,
) -> Result<Outcome> {
    let name = if is_key_text(source) {
        "the key given with -i".to_owned()
    } else {
        format!("`{}`", source.display())
    };
    let key = match load_key(source, options) {
        Ok(key) => key,
        Err(problem) => {
            tracing::debug!("not offering {name}: {problem}");
            attempts.problems.push(problem);
            return Ok(Outcome::Refused);
        }
    };
    let key = Arc::new(key);
    let user = attempts.hop.user.clone();
    // A certificate for this key goes first, as `ssh` offers it; then the bare key.
    if let Some((cert, cert_path)) = certificate_for(source, &key, &attempts.hop.certificate_files)
    {
        tracing::debug!(
            "trying publickey: {name} with the certificate `{}`",
            cert_path.display()
        );
        let result = handle
            .authenticate_openssh_cert(user.clone(), key.clone(), cert)
            .await
            .map_err(|e| attempts.broken(e))?;
        let refused = format!(
            "{name} with the certificate `{}` was refused",
            cert_path.display()
        );
        if let Outcome::Success = attempts.record(result, refused) {
            return Ok(Outcome::Success);
        }
    }
    let hash = rsa_hash(handle).await;
    tracing::debug!(
        "trying publickey: {name} ({} {})",
        key.algorithm().as_str(),
        key.public_key().fingerprint(russh::keys::HashAlg::Sha256)
    );
    let offer = PrivateKeyWithHashAlg::new(key, hash);
    let result = handle
        .authenticate_publickey(user, offer)
        .await
        .map_err(|e| attempts.broken(e))?;
    Ok(attempts.record(result, format!("{name} was refused")))
}

/// The OpenSSH certificate for `key`: `KEYFILE-cert.pub` beside a key file, else the first
/// of the config's `CertificateFile`s that certifies this key. Unreadable or unrelated
/// files are passed over, as `ssh` passes them over.
fn certificate_for(
    source: &Path,
    key: &PrivateKey,
    configured: &[PathBuf],
) -> Option<(russh::keys::Certificate, PathBuf)> {
    let beside = (!is_key_text(source)).then(|| {
        let mut name = source.as_os_str().to_owned();
        name.push("-cert.pub");
        PathBuf::from(name)
    });
    beside
        .into_iter()
        .chain(configured.iter().cloned())
        .find_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            let cert = russh::keys::Certificate::from_openssh(text.trim()).ok()?;
            (cert.public_key() == key.public_key().key_data()).then_some((cert, path))
        })
}

/// The ssh-agent's socket: the one given, else the config's `IdentityAgent` (a path,
/// `SSH_AUTH_SOCK`, or `none` for no agent), else `$SSH_AUTH_SOCK`.
pub(crate) fn agent_socket(given: Option<&PathBuf>, configured: Option<&str>) -> Option<PathBuf> {
    let from_env = || match std::env::var_os("SSH_AUTH_SOCK") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => None,
    };
    match (given, configured) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(none)) if none.eq_ignore_ascii_case("none") => None,
        (None, Some("SSH_AUTH_SOCK")) | (None, None) => from_env(),
        (None, Some(path)) => Some(agent_path(path)),
    }
}

/// An `IdentityAgent` path with `~` and `$VAR` (or `${VAR}`) expanded, as `ssh` expands them.
fn agent_path(text: &str) -> PathBuf {
    let text = match text.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!("{}{rest}", reach_core::local::home_dir().display())
        }
        _ => text.to_owned(),
    };
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, next) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => (braced, ""),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push_str(&std::env::var(name).unwrap_or_default());
        rest = next;
    }
    out.push_str(rest);
    PathBuf::from(out)
}

async fn try_agent(
    handle: &mut Handle,
    attempts: &mut Attempts<'_>,
    options: &SshOptions,
) -> Result<Outcome> {
    let configured = attempts.hop.identity_agent.as_deref();
    let Some(socket) = agent_socket(options.agent_socket.as_ref(), configured) else {
        return Ok(Outcome::Refused);
    };
    tracing::debug!("asking the ssh-agent at `{}` for keys", socket.display());
    let mut agent = match AgentClient::connect_uds(&socket).await {
        Ok(agent) => agent,
        Err(e) => {
            attempts.problems.push(format!(
                "the ssh-agent at `{}` did not answer: {e}",
                socket.display()
            ));
            return Ok(Outcome::Refused);
        }
    };
    let identities = match agent.request_identities().await {
        Ok(identities) => identities,
        Err(e) => {
            attempts
                .problems
                .push(format!("the ssh-agent did not list its keys: {e}"));
            return Ok(Outcome::Refused);
        }
    };
    let hash = rsa_hash(handle).await;
    for identity in identities {
        let user = attempts.hop.user.clone();
        // Certificates the agent holds are offered as they come, as `ssh` offers them.
        let (signed, comment) = match identity {
            AgentIdentity::PublicKey { key, comment } => {
                tracing::debug!(
                    "trying publickey: the agent's key `{comment}` ({} {})",
                    key.algorithm().as_str(),
                    key.fingerprint(russh::keys::HashAlg::Sha256)
                );
                (
                    handle
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await,
                    comment,
                )
            }
            AgentIdentity::Certificate {
                certificate,
                comment,
            } => {
                tracing::debug!("trying publickey: the agent's certificate `{comment}`");
                (
                    handle
                        .authenticate_certificate_with(user, certificate, hash, &mut agent)
                        .await,
                    format!("{comment} (certificate)"),
                )
            }
        };
        match signed {
            Ok(result) => {
                let what = format!("the agent's key `{comment}` was refused");
                if let Outcome::Success = attempts.record(result, what) {
                    return Ok(Outcome::Success);
                }
            }
            Err(e) => attempts
                .problems
                .push(format!("the agent could not sign with `{comment}`: {e:?}")),
        }
    }
    Ok(Outcome::Refused)
}

async fn try_password(
    handle: &mut Handle,
    attempts: &mut Attempts<'_>,
    options: &SshOptions,
) -> Result<Outcome> {
    let by_password = attempts.allows(MethodKind::Password);
    let by_keyboard = attempts.allows(MethodKind::KeyboardInteractive);
    if !by_password && !by_keyboard {
        return Ok(Outcome::Refused);
    }
    let hop = attempts.hop;
    let password = options.password.clone().or_else(|| {
        options
            .prompt
            .as_ref()
            .and_then(|ask| ask(&format!("{}@{}'s password: ", hop.user, hop.host)))
    });
    let Some(password) = password else {
        tracing::debug!(
            "no password to try (REACH_SSH_PASSWORD is not set and there is no terminal to ask on)"
        );
        return Ok(Outcome::Refused);
    };
    if by_password {
        tracing::debug!("trying password");
        let result = handle
            .authenticate_password(hop.user.clone(), password.as_str())
            .await
            .map_err(|e| attempts.broken(e))?;
        if let Outcome::Success = attempts.record(result, "the password was refused".into()) {
            return Ok(Outcome::Success);
        }
    }
    if by_keyboard && attempts.allows(MethodKind::KeyboardInteractive) {
        tracing::debug!("trying keyboard-interactive with the password");
        let mut reply = handle
            .authenticate_keyboard_interactive_start(hop.user.clone(), None)
            .await
            .map_err(|e| attempts.broken(e))?;
        // Answer password prompts (echo off) with the password, a bounded number of rounds.
        for _round in 0..4 {
            match reply {
                client::KeyboardInteractiveAuthResponse::Success => return Ok(Outcome::Success),
                client::KeyboardInteractiveAuthResponse::Failure {
                    remaining_methods, ..
                } => {
                    attempts.methods = Some(remaining_methods);
                    attempts
                        .problems
                        .push("the password was refused (keyboard-interactive)".into());
                    return Ok(Outcome::Refused);
                }
                client::KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                    let answers = prompts
                        .iter()
                        .map(|p| {
                            if p.echo {
                                String::new()
                            } else {
                                password.as_str().to_owned()
                            }
                        })
                        .collect();
                    reply = handle
                        .authenticate_keyboard_interactive_respond(answers)
                        .await
                        .map_err(|e| attempts.broken(e))?;
                }
            }
        }
    }
    Ok(Outcome::Refused)
}

/// Authenticates `hop.user` on `handle`, or says everything that was tried.
pub(crate) async fn authenticate(
    handle: &mut Handle,
    hop: &Hop,
    options: &SshOptions,
) -> Result<()> {
    let mut attempts = Attempts {
        hop,
        problems: Vec::new(),
        methods: None,
    };
    let mut tried: Vec<PathBuf> = Vec::new();
    if let Some(identity) = &options.identity {
        if !is_key_text(identity) && !identity.exists() {
            attempts.problems.push(format!(
                "identity file `{}` does not exist",
                identity.display()
            ));
        } else if let Outcome::Success = try_key(handle, &mut attempts, identity, options).await? {
            return Ok(());
        }
        tried.push(identity.clone());
    }
    if options.use_agent && !hop.identities_only && attempts.allows(MethodKind::PublicKey) {
        if let Outcome::Success = try_agent(handle, &mut attempts, options).await? {
            return Ok(());
        }
    }
    let defaults = ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|name| home_dir().join(".ssh").join(name));
    let files: Vec<PathBuf> = hop.identity_files.iter().cloned().chain(defaults).collect();
    for file in files {
        if tried.contains(&file) || !file.exists() || !attempts.allows(MethodKind::PublicKey) {
            continue;
        }
        if let Outcome::Success = try_key(handle, &mut attempts, &file, options).await? {
            return Ok(());
        }
        tried.push(file);
    }
    if attempts.methods.is_none() {
        // No key was offered: ask the server which methods it takes ("none" auth).
        tracing::debug!("no key to offer: asking which methods the server accepts");
        let result = handle
            .authenticate_none(hop.user.clone())
            .await
            .map_err(|e| attempts.broken(e))?;
        if let Outcome::Success = attempts.record(result, "no key was offered".into()) {
            return Ok(());
        }
    }
    if let Outcome::Success = try_password(handle, &mut attempts, options).await? {
        return Ok(());
    }
    let methods = attempts
        .methods
        .as_ref()
        .map(method_names)
        .unwrap_or_default();
    Err(Error::new(
        ErrorKind::AuthFailed,
        format!(
            "`{}@{}` refused every credential ({}; the server accepts: {methods}): pass the \
             right key with -i FILE, load it into ssh-agent, or set REACH_SSH_PASSWORD",
            hop.user,
            hop.addr(),
            attempts.problems.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_paths_expand_home_and_variables() {
        let home = reach_core::local::home_dir().display().to_string();
        assert_eq!(agent_path("~/.a/s"), PathBuf::from(format!("{home}/.a/s")));
        assert_eq!(agent_path("$HOME/s"), PathBuf::from(format!("{home}/s")));
        assert_eq!(
            agent_path("${HOME}.d/s"),
            PathBuf::from(format!("{home}.d/s"))
        );
        assert_eq!(agent_path("/run/s"), PathBuf::from("/run/s"));
        assert_eq!(
            agent_path("/x/$REACH_SURELY_UNSET_VAR/s"),
            PathBuf::from("/x//s")
        );
    }
}
