//! The handshake's host-key check: the russh client handler that holds a server's key
//! against the known_hosts files (parsed by [`crate::known_hosts`]), and accepts new keys
//! when told to.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reach_core::{Error, ErrorKind, Result};
use russh::client;
use russh::keys::{HashAlg, PublicKey};

use crate::*;

/// The russh client handler: checks the host key against known_hosts.
#[derive(Debug)]
pub(crate) struct HostKeyCheck {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The user's and the system's known_hosts files, read once for the handshake.
    pub(crate) known: KnownHosts,
    /// The agent that agent channels from the server are joined to; `None` refuses them.
    pub(crate) forward_to: Option<PathBuf>,
    /// The `@cert-authority` keys trusted for this host.
    pub(crate) authorities: Vec<PublicKey>,
    pub(crate) accept_new: bool,
    pub(crate) rejection: Arc<Mutex<Option<Error>>>,
}

/// A hop's known_hosts files, read once per handshake: the user's, whose absence or read
/// error matters, then the system's, where an unreadable file says nothing (as for `ssh`).
#[derive(Debug)]
pub(crate) struct KnownHosts {
    pub(crate) user: PathBuf,
    /// `Ok(None)` when the user's file does not exist.
    pub(crate) user_text: std::io::Result<Option<String>>,
    pub(crate) global: Vec<(PathBuf, String)>,
}

impl KnownHosts {
    pub(crate) fn read(user: &Path, global: &[PathBuf]) -> KnownHosts {
        let user_text = match std::fs::read_to_string(user) {
            Ok(text) => Ok(Some(text)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        };
        KnownHosts {
            user: user.to_owned(),
            user_text,
            global: global
                .iter()
                .filter_map(|file| Some((file.clone(), std::fs::read_to_string(file).ok()?)))
                .collect(),
        }
    }

    /// Every file that was read, with its text, the user's first.
    pub(crate) fn texts(&self) -> impl Iterator<Item = (&Path, &str)> {
        let user = match &self.user_text {
            Ok(Some(text)) => Some((self.user.as_path(), text.as_str())),
            _ => None,
        };
        user.into_iter().chain(
            self.global
                .iter()
                .map(|(file, text)| (file.as_path(), text.as_str())),
        )
    }

    /// What each file says about `algorithm` `blob` for `host`:`port`.
    pub(crate) fn verdicts(
        &self,
        host: &str,
        port: u16,
        algorithm: &str,
        blob: &str,
    ) -> Vec<(&Path, known_hosts::Verdict)> {
        self.texts()
            .map(|(file, text)| (file, known_hosts::check(text, host, port, algorithm, blob)))
            .collect()
    }
}

/// A key's algorithm name and base64 blob, as a known_hosts line writes them.
pub(crate) fn openssh_fields(key: &PublicKey) -> Result<(String, String)> {
    let openssh = key
        .to_openssh()
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("unreadable host key: {e}")))?;
    let mut parts = openssh.split_whitespace();
    Ok((
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    ))
}

impl HostKeyCheck {
    pub(crate) fn verdict(&self, key: &PublicKey) -> Result<()> {
        let (algorithm, blob) = &openssh_fields(key)?;
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let path = self.known.user.display();
        let user_file_missing = match &self.known.user_text {
            Ok(text) => text.is_none(),
            Err(e) => {
                let e = std::io::Error::new(e.kind(), e.to_string());
                return Err(Error::io(format!("read known_hosts file `{path}`"), e));
            }
        };
        // A key known to any file is known, a revoked one is refused whatever the others
        // say, and a host whose entries all hold other keys has changed its key.
        let verdicts = self.known.verdicts(&self.host, self.port, algorithm, blob);
        let reject = |why: String| Err(Error::new(ErrorKind::HostKeyRejected, why));
        if let Some((file, line)) = verdicts.iter().find_map(|(file, v)| match v {
            known_hosts::Verdict::Revoked(line) => Some((file, line)),
            _ => None,
        }) {
            return reject(format!(
                "the host key of `{name}` ({algorithm} {fingerprint}) is marked @revoked in \
                 `{}` line {line}: refusing to connect",
                file.display()
            ));
        }
        if verdicts
            .iter()
            .any(|(_, v)| matches!(v, known_hosts::Verdict::Known))
        {
            return Ok(());
        }
        if let Some((file, line)) = verdicts.iter().find_map(|(file, v)| match v {
            known_hosts::Verdict::Changed(line) => Some((file, line)),
            _ => None,
        }) {
            return reject(format!(
                "the host key of `{name}` CHANGED: it is now {algorithm} {fingerprint}, but \
                 `{}` line {line} records another. This may be an attack. If the server was \
                 really re-keyed, remove that line and connect again",
                file.display()
            ));
        }
        if self.accept_new {
            use std::io::Write;
            if let Some(dir) = self.known.user.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("create `{}`", dir.display()), e))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.known.user)
                .map_err(|e| Error::io(format!("open `{path}`"), e))?;
            return file
                .write_all(known_hosts::entry(&self.host, self.port, algorithm, blob).as_bytes())
                .map_err(|e| Error::io(format!("write `{path}`"), e));
        }
        if user_file_missing {
            return reject(format!(
                "known_hosts file `{path}` does not exist, so the host key of `{name}` \
                 ({algorithm} {fingerprint}) cannot be checked: create the file, or \
                 pass --accept-new-host-key to record this key"
            ));
        }
        reject(format!(
            "the host key of `{name}` is unknown ({algorithm} {fingerprint}, not in \
             `{path}`): check the fingerprint with the server's administrator, then pass \
             --accept-new-host-key to record it"
        ))
    }
}

impl HostKeyCheck {
    /// A host certificate is good when an authority trusted for this host signed it, it is
    /// a host certificate, it is valid now, it names this host (or no host), and neither
    /// its key nor its authority is revoked.
    pub(crate) fn certified(&self, cert: &russh::keys::Certificate) -> Result<()> {
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let reject = |why: String| Err(Error::new(ErrorKind::HostKeyRejected, why));
        let fingerprints: Vec<_> = self
            .authorities
            .iter()
            .map(|ca| ca.fingerprint(HashAlg::Sha256))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Err(e) = cert.validate_at(now, fingerprints.iter()) {
            return reject(format!(
                "the host certificate of `{name}` (signed by {}) is not valid: {e}; \
                 check the @cert-authority lines of your known_hosts files",
                cert.signature_key().fingerprint(HashAlg::Sha256)
            ));
        }
        if cert.cert_type() != russh::keys::ssh_key::certificate::CertType::Host {
            return reject(format!(
                "`{name}` offered a user certificate as its host key"
            ));
        }
        let principals = cert.valid_principals();
        if !principals.is_empty() && !principals.iter().any(|p| p == &self.host) {
            return reject(format!(
                "the host certificate of `{name}` is for {principals:?}, not `{}`",
                self.host
            ));
        }
        for key in [
            PublicKey::from(cert.public_key().clone()),
            PublicKey::from(cert.signature_key().clone()),
        ] {
            self.verdict_revoked_only(&key)?;
        }
        Ok(())
    }

    /// Refuses `key` if any known_hosts file marks it `@revoked`.
    pub(crate) fn verdict_revoked_only(&self, key: &PublicKey) -> Result<()> {
        let (algorithm, blob) = &openssh_fields(key)?;
        for (file, verdict) in self.known.verdicts(&self.host, self.port, algorithm, blob) {
            if let known_hosts::Verdict::Revoked(line) = verdict {
                return Err(Error::new(
                    ErrorKind::HostKeyRejected,
                    format!(
                        "the host certificate of `{}` uses a key marked @revoked in `{}` line \
                         {line}: refusing to connect",
                        known_hosts::host_entry_name(&self.host, self.port),
                        file.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    /// An agent channel the server opens for a forwarding session: joined to the local
    /// agent when forwarding was asked for, refused otherwise.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> std::result::Result<(), Self::Error> {
        let Some(socket) = self.forward_to.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        tokio::spawn(async move {
            let Ok(mut agent) = tokio::net::UnixStream::connect(&socket).await else {
                return;
            };
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
        });
        Ok(())
    }

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let (verdict, shown) = match server_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => (
                self.verdict(key),
                format!(
                    "host key {} {}",
                    key.algorithm().as_str(),
                    key.fingerprint(HashAlg::Sha256)
                ),
            ),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => (
                self.certified(cert),
                format!(
                    "host certificate {} signed by {}",
                    cert.public_key().algorithm().as_str(),
                    cert.signature_key().fingerprint(HashAlg::Sha256)
                ),
            ),
        };
        tracing::debug!("server `{name}` offers {shown}");
        match verdict {
            Ok(()) => {
                tracing::info!(
                    "{shown} of `{name}` accepted (known_hosts: {})",
                    self.known.user.display()
                );
                Ok(true)
            }
            Err(err) => {
                tracing::info!("{shown} of `{name}` refused: {}", err.message());
                if let Ok(mut slot) = self.rejection.lock() {
                    *slot = Some(err);
                }
                Ok(false)
            }
        }
    }
}
