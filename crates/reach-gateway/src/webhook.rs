//! The authentication webhook: a JSON `POST` over plain HTTP/1.1 to a service that answers
//! allow or deny. Any failure — refused connection, timeout, a status other than 200, a body
//! without `"allow": true` — is a deny.

use std::time::Duration;

use reach_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, as connected to.
    pub authority: String,
    /// The host, for the `Host` header.
    pub host: String,
    /// The path and query.
    pub path: String,
}

impl Url {
    /// Parses a webhook URL; only `http://` is supported (put the service on loopback or
    /// behind a local TLS proxy).
    pub fn parse(url: &str) -> Result<Url> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("webhook URL `{url}`: only http:// URLs are supported"),
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("webhook URL `{url}` names no host"),
            ));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']');
        let host = authority.to_owned();
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            host,
            path: path.to_owned(),
        })
    }
}

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

/// Asks the webhook; `Ok(true)` only for a 200 answer whose JSON body has `"allow": true`.
pub async fn ask(url: &Url, timeout: Duration, query: &Query<'_>) -> Result<bool> {
    match tokio::time::timeout(timeout, exchange(url, query)).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the auth webhook at {} did not answer within {timeout:?}",
                url.authority
            ),
        )),
    }
}

async fn exchange(url: &Url, query: &Query<'_>) -> Result<bool> {
    let body = serde_json::json!({
        "user": query.user,
        "method": "publickey",
        "key_fingerprint": query.fingerprint,
        "key_type": query.key_type,
        "remote_address": query.remote_address,
        "connection_id": query.connection,
    })
    .to_string();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nConnection: close\r\nUser-Agent: reach-serve\r\n\r\n{body}",
        url.path,
        url.host,
        body.len()
    );
    let fail = |e: std::io::Error| Error::io(format!("the auth webhook at {}", url.authority), e);
    let mut stream = TcpStream::connect(&url.authority).await.map_err(fail)?;
    stream.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut response = Vec::new();
    // An answer is small; a webhook that sends more is wrong.
    (&mut stream)
        .take(64 * 1024)
        .read_to_end(&mut response)
        .await
        .map_err(fail)?;
    Ok(allowed(&response))
}

/// Whether an HTTP response says allow.
fn allowed(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let status_ok = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("200");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    status_ok
        && serde_json::from_str::<serde_json::Value>(body.trim())
            .ok()
            .and_then(|v| v.get("allow").and_then(serde_json::Value::as_bool))
            == Some(true)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/auth?x=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!(u.path, "/auth?x=1");
        assert_eq!(Url::parse("http://hook").unwrap().authority, "hook:80");
        assert!(Url::parse("https://hook/").is_err());
    }

    #[test]
    fn only_an_explicit_allow_allows() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"allow\":true}";
        assert!(allowed(ok));
        assert!(!allowed(b"HTTP/1.1 200 OK\r\n\r\n{\"allow\":false}"));
        assert!(!allowed(b"HTTP/1.1 500 Oops\r\n\r\n{\"allow\":true}"));
        assert!(!allowed(b"HTTP/1.1 200 OK\r\n\r\nyes"));
        assert!(allowed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\n{\"allow\":true}\r\n0\r\n\r\n"
        ));
    }
}
