//! `known_hosts` files as OpenSSH reads them: plain and hashed (`|1|salt|hash`) host
//! patterns, `[host]:port` entries, `*`/`?` wildcards, `!` negation, and `@revoked` keys.
//! `@cert-authority` lines are skipped (certificates are not supported yet).

use base64::Engine;
use hmac::{Hmac, Mac};
use reach_core::pattern::{list_matches, wildcard_ignore_ascii_case};
use sha1::Sha1;

/// What a known_hosts file says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is recorded for this host.
    Known,
    /// The key is marked `@revoked` (on this 1-based line).
    Revoked(usize),
    /// Other keys of the same type are recorded for this host (on this line): the host key
    /// changed, which may be an attack.
    Changed(usize),
    /// Nothing is recorded for this host and key type.
    Unknown,
}

/// The name a host has in known_hosts: `host` on port 22, `[host]:port` otherwise.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `algorithm` + `key_base64` (as in a `.pub` file) for `host`:`port` against the
/// text of a known_hosts file.
pub fn check(text: &str, host: &str, port: u16, algorithm: &str, key_base64: &str) -> Verdict {
    let name = host_entry_name(host, port);
    let mut changed = None;
    let mut known = false;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue,
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(algo), Some(key)) = (fields.next(), fields.next()) else {
            continue;
        };
        if revoked {
            // A revoked key is refused for every host.
            if algo == algorithm && key == key_base64 {
                return Verdict::Revoked(line_no);
            }
            continue;
        }
        if !hosts_match(first, &name) {
            continue;
        }
        if algo == algorithm {
            if key == key_base64 {
                known = true;
            } else if changed.is_none() {
                changed = Some(line_no);
            }
        }
    }
    match (known, changed) {
        (true, _) => Verdict::Known,
        (false, Some(line)) => Verdict::Changed(line),
        (false, None) => Verdict::Unknown,
    }
}

/// The certificate authorities trusted for `host`:`port`: the `(algorithm, key_base64)` of
/// every `@cert-authority` line whose host patterns match it.
pub fn authorities(text: &str, host: &str, port: u16) -> Vec<(String, String)> {
    let name = host_entry_name(host, port);
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != "@cert-authority" {
                return None;
            }
            let (patterns, algorithm, key) = (fields.next()?, fields.next()?, fields.next()?);
            hosts_match(patterns, &name).then(|| (algorithm.to_owned(), key.to_owned()))
        })
        .collect()
}

/// Whether a comma-separated pattern list matches `name`: some positive pattern matches and
/// no negated one does.
fn hosts_match(patterns: &str, name: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    list_matches(patterns.split(','), |pattern| {
        wildcard_ignore_ascii_case(pattern, name)
    })
}

fn hashed_match(hashed: &str, name: &str) -> bool {
    let engine = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// The line to append for accept-new.
pub fn entry(host: &str, port: u16, algorithm: &str, key_base64: &str) -> String {
    format!("{} {algorithm} {key_base64}\n", host_entry_name(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIGoodKeyGoodKeyGoodKeyGoodKeyGoodKeyGood";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOther";

    #[test]
    fn plain_port_and_wildcard_entries() {
        let text = format!(
            "# comment\nexample.com ssh-ed25519 {KEY}\n[10.0.0.1]:2222 ssh-ed25519 {KEY} c\n\
             *.lan,!bad.lan ssh-ed25519 {KEY}\n"
        );
        let v = |h, p| check(&text, h, p, "ssh-ed25519", KEY);
        assert_eq!(v("example.com", 22), Verdict::Known);
        assert_eq!(v("EXAMPLE.com", 22), Verdict::Known);
        assert_eq!(v("example.com", 2200), Verdict::Unknown);
        assert_eq!(v("10.0.0.1", 2222), Verdict::Known);
        assert_eq!(v("10.0.0.1", 22), Verdict::Unknown);
        assert_eq!(v("box.lan", 22), Verdict::Known);
        assert_eq!(v("bad.lan", 22), Verdict::Unknown);
        assert_eq!(
            check(&text, "example.com", 22, "ssh-rsa", KEY),
            Verdict::Unknown
        );
        assert_eq!(
            check(&text, "example.com", 22, "ssh-ed25519", OTHER),
            Verdict::Changed(2)
        );
    }

    #[test]
    fn hashed_entries() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222" with this salt.
        let engine = base64::engine::general_purpose::STANDARD;
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        let text = format!(
            "|1|{}|{} ssh-ed25519 {KEY}\n",
            engine.encode(salt),
            engine.encode(hash)
        );
        assert_eq!(
            check(&text, "127.0.0.1", 2222, "ssh-ed25519", KEY),
            Verdict::Known
        );
        assert_eq!(
            check(&text, "127.0.0.1", 2223, "ssh-ed25519", KEY),
            Verdict::Unknown
        );
    }

    #[test]
    fn revoked_keys_are_refused_everywhere() {
        let text = format!("h ssh-ed25519 {KEY}\n@revoked * ssh-ed25519 {KEY}\n");
        assert_eq!(
            check(&text, "h", 22, "ssh-ed25519", KEY),
            Verdict::Revoked(2)
        );
        assert_eq!(
            check(&text, "elsewhere", 22, "ssh-ed25519", KEY),
            Verdict::Revoked(2)
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_ignore_ascii_case("*", "anything"));
        assert!(wildcard_ignore_ascii_case("a?c", "abc"));
        assert!(wildcard_ignore_ascii_case(
            "*.example.com",
            "a.b.example.com"
        ));
        assert!(!wildcard_ignore_ascii_case("*.example.com", "example.com"));
        assert!(wildcard_ignore_ascii_case("[*]:2222", "[h]:2222"));
        assert!(!wildcard_ignore_ascii_case("a*b", "ac"));
    }
}
