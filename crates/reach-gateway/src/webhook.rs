//! The authentication webhook: a JSON `POST` to a service that answers allow or deny, through
//! reqwest over rustls. Any failure — refused connection, a certificate that does not verify,
//! timeout, a status other than 200, a body without `"allow": true` — is a deny.
//!
//! The client is made once, so logins reuse its connections. `https://` URLs are verified
//! against the system's roots, or only against `ca_file` when one is configured; plain
//! `http://` is accepted only to a loopback address unless `allow_plain_http` says otherwise,
//! since an allow crossing a network in the clear can be forged by anyone on the path.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use zeroize::Zeroizing;

use crate::config::WebhookConfig;

/// The most of an answer read: an allow is a few bytes, and a webhook that sends more is wrong.
const MAX_ANSWER: usize = 64 * 1024;

/// What the gateway tells the webhook about one attempt.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The user name the client asked for.
    pub user: &'a str,
    /// The key's SHA-256 fingerprint (`SHA256:...`).
    pub fingerprint: &'a str,
    /// The key's algorithm.
    pub key_type: &'a str,
    /// The client's address.
    pub remote_address: &'a str,
    /// The gateway's connection id.
    pub connection: &'a str,
}

/// A configured webhook, ready to ask (cheap to clone: clones share the connection pool).
#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `Bearer <secret>`, marked sensitive so no layer below prints it.
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("secret", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Checks a webhook URL against the transport policy and parses it.
pub fn parse_url(url: &str, allow_plain_http: bool) -> Result<reqwest::Url> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidInput, why);
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid(format!("webhook URL `{url}`: {e} (give https://host/path)")))?;
    let Some(host) = parsed.host_str() else {
        return Err(invalid(format!("webhook URL `{url}` names no host")));
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_plain_http || is_loopback(host) => Ok(parsed),
        "http" => Err(invalid(format!(
            "webhook URL `{url}`: plain http:// is accepted only to a loopback address, since \
             an allow sent in the clear can be forged on the way; use https://, or set \
             `allow_plain_http = true` in [auth.webhook] if the network is trusted"
        ))),
        other => Err(invalid(format!(
            "webhook URL `{url}`: scheme `{other}` is not supported (use https://)"
        ))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::io(format!("[auth.webhook] {what} `{}`", path.display()), e))
}

/// The shared secret, from a file only its owner can read.
fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::io(
            format!("[auth.webhook] secret_file `{}`", path.display()),
            e,
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "[auth.webhook] secret_file `{}` can be read by others (mode {:o}): \
                 `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let bytes = Zeroizing::new(read_file(path, "secret_file")?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "[auth.webhook] secret_file `{}` is not UTF-8 text",
                path.display()
            ),
        )
    })?;
    let secret = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
    if secret.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("[auth.webhook] secret_file `{}` is empty", path.display()),
        ));
    }
    Ok(secret)
}

impl Webhook {
    /// Builds the client `config` describes: its URL checked, its CA, client certificate and
    /// secret read.
    pub fn new(config: &WebhookConfig) -> Result<Webhook> {
        let url = parse_url(&config.url, config.allow_plain_http)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let tls_error = |what: &str, e: reqwest::Error| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("[auth.webhook] {what}: {}", chain(&e)),
            )
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(url.scheme() == "https")
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reach-serve/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = read_file(ca, "ca_file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(&format!("ca_file `{}`", ca.display()), e))?;
            if certs.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "[auth.webhook] ca_file `{}` holds no PEM certificate",
                        ca.display()
                    ),
                ));
            }
            // A configured CA is the only one trusted: the system's roots would let any
            // public certificate for that name answer for the webhook.
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = Zeroizing::new(read_file(cert, "client_cert")?);
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&Zeroizing::new(read_file(key, "client_key")?));
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| tls_error("client_cert and client_key", e))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "[auth.webhook] client_cert and client_key go together: give both or neither",
                ))
            }
        }
        let authorization = match &config.secret_file {
            Some(path) => {
                let secret = read_secret(path)?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", secret.as_str()))
                    .map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "[auth.webhook] secret_file `{}` holds characters a header \
                                 cannot carry",
                                path.display()
                            ),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = builder
            .build()
            .map_err(|e| tls_error("building the HTTP client", e))?;
        Ok(Webhook {
            client,
            url,
            authorization,
            timeout,
        })
    }

    /// Asks the webhook; `Ok(true)` only for a 200 answer whose JSON body has
    /// `"allow": true`. `Err` says why it could not be asked (the caller denies).
    pub async fn ask(&self, query: &Query<'_>) -> Result<bool> {
        let body = serde_json::json!({
            "user": query.user,
            "method": "publickey",
            "key_fingerprint": query.fingerprint,
            "key_type": query.key_type,
            "remote_address": query.remote_address,
            "connection_id": query.connection,
        })
        .to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(value) = &self.authorization {
            request = request.header(AUTHORIZATION, value.clone());
        }
        let fail = |e: reqwest::Error| {
            // The URL's path and query may carry a token: the origin alone is named.
            let e = e.without_url();
            let kind = if e.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Io
            };
            Error::new(
                kind,
                format!(
                    "the auth webhook at {} (timeout {:?}): {}",
                    self.origin(),
                    self.timeout,
                    chain(&e)
                ),
            )
        };
        let mut response = request.send().await.map_err(fail)?;
        if response.status() != reqwest::StatusCode::OK {
            return Ok(false);
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Ok(false);
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(allows(&answer))
    }

    /// Scheme, host and port: what logs name (a path may carry a token).
    fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

/// Whether a 200 answer's body says allow.
fn allows(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("allow").and_then(serde_json::Value::as_bool))
        == Some(true)
}

/// An error with its causes (reqwest's own message is only the outermost one: "error
/// sending request"; the certificate problem is further down).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        for ok in [
            "https://hook.example/auth",
            "http://127.0.0.1:8080/auth?x=1",
            "http://[::1]/auth",
            "http://localhost:9/",
        ] {
            assert!(parse_url(ok, false).is_ok(), "{ok}");
        }
        let err = parse_url("http://hook.example/auth", false).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidInput));
        assert!(err.message().contains("allow_plain_http"), "{err}");
        assert!(parse_url("http://hook.example/auth", true).is_ok());
        assert!(parse_url("ftp://hook.example/", true).is_err());
        assert!(parse_url("hook.example", false).is_err());
    }

    #[test]
    fn only_an_explicit_allow_allows() {
        assert!(allows(b"{\"allow\":true}"));
        assert!(allows(b" {\"allow\": true, \"why\": \"ok\"}\n"));
        assert!(!allows(b"{\"allow\":false}"));
        assert!(!allows(b"{\"allow\":\"true\"}"));
        assert!(!allows(b"yes"));
        assert!(!allows(b""));
    }
}
