//! Who gets in: `authorized_keys` files (with the options that restrict a key), argon2
//! password hashes, and a per-address limit on failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use reach_core::pattern::{list_matches, wildcard};
use reach_core::sync::lock;
use reach_core::{Error, ErrorKind, Result};
use russh::keys::PublicKey;

/// What an accepted key may do, from its `authorized_keys` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// A PTY may be allocated.
    pub pty: bool,
    /// The client's agent may be forwarded.
    pub agent_forwarding: bool,
    /// TCP connections may be forwarded (`ssh -L`).
    pub port_forwarding: bool,
}

impl Permissions {
    /// Everything allowed.
    pub const ALL: Permissions = Permissions {
        pty: true,
        agent_forwarding: true,
        port_forwarding: true,
    };
}

/// One usable line of an `authorized_keys` file.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    /// The key.
    pub key: PublicKey,
    /// `from="..."` patterns, if any.
    pub from: Option<Vec<String>>,
    /// What the key may do.
    pub permissions: Permissions,
}

impl AuthorizedKey {
    /// Whether this line lets `key` in from `addr`.
    pub fn admits(&self, key: &PublicKey, addr: Option<IpAddr>) -> bool {
        if self.key.key_data() != key.key_data() {
            return false;
        }
        match (&self.from, addr) {
            (None, _) => true,
            (Some(patterns), Some(addr)) => from_matches(patterns, addr),
            (Some(_), None) => false,
        }
    }
}

/// Options the gateway honours. A line with any other option (`command=`, `permitopen=`,
/// `principals=`, ...) is skipped: ignoring a restriction would let the key do more than
/// its owner allowed.
const NO_OPS: &[&str] = &["no-x11-forwarding", "no-user-rc"];

/// Parses an `authorized_keys` file's text. Returns the usable keys and, for each skipped
/// line, why (for the log).
pub fn parse_authorized_keys(text: &str) -> (Vec<AuthorizedKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("line {}: {why}", n + 1)),
        }
    }
    (keys, skipped)
}

fn parse_line(line: &str) -> std::result::Result<AuthorizedKey, String> {
    let words = split_unquoted_spaces(line);
    // The key type is the first word that names an algorithm; before it come options.
    let type_at = words
        .iter()
        .position(|w| is_key_type(w))
        .ok_or("no key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-*, ...)")?;
    if type_at > 1 {
        return Err("options must be one comma-separated word".to_owned());
    }
    let blob = words.get(type_at + 1).ok_or("no key after the type")?;
    let key = russh::keys::parse_public_key_base64(blob).map_err(|e| format!("bad key: {e}"))?;
    let mut permissions = Permissions::ALL;
    let mut from = None;
    if type_at == 1 {
        for option in split_unquoted(&words[0], ',') {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(v.trim_matches('"').to_owned())),
                None => (option.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("from", Some(v)) => {
                    from = Some(v.split(',').map(|p| p.trim().to_owned()).collect());
                }
                ("no-pty", None) => permissions.pty = false,
                ("no-agent-forwarding", None) => permissions.agent_forwarding = false,
                ("no-port-forwarding", None) => permissions.port_forwarding = false,
                ("restrict", None) => {
                    permissions = Permissions {
                        pty: false,
                        agent_forwarding: false,
                        port_forwarding: false,
                    }
                }
                ("pty", None) => permissions.pty = true,
                ("agent-forwarding", None) => permissions.agent_forwarding = true,
                ("port-forwarding", None) => permissions.port_forwarding = true,
                (n, None) if NO_OPS.contains(&n) => {}
                (n, _) => return Err(format!("option `{n}` is not supported by reach serve")),
            }
        }
    }
    Ok(AuthorizedKey {
        key,
        from,
        permissions,
    })
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-")
        || word.starts_with("ecdsa-sha2-")
        || word.starts_with("sk-")
        || word.starts_with("rsa-sha2-")
}

/// Splits on spaces outside double quotes.
fn split_unquoted_spaces(line: &str) -> Vec<String> {
    split_unquoted(line, ' ')
        .into_iter()
        .filter(|w| !w.is_empty())
        .collect()
}

fn split_unquoted(text: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            cur.push(c);
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if (c == sep || (sep == ' ' && c == '\t')) && !quoted {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// `from=` semantics: a negated pattern that matches refuses; otherwise some plain pattern
/// must match. Patterns are addresses with `*`/`?` wildcards, or CIDR blocks. (Host names
/// are not looked up; a name pattern never matches.)
pub fn from_matches(patterns: &[String], addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    let text = addr.to_string();
    list_matches(patterns.iter().map(String::as_str), |pattern| {
        if pattern.contains('/') {
            cidr_contains(pattern, addr)
        } else {
            wildcard(pattern, &text)
        }
    })
}

fn cidr_contains(block: &str, addr: IpAddr) -> bool {
    let Some((net, bits)) = block.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The `authorized_keys` path for `user`: `%u` replaced, `~/` expanded.
pub fn keys_path(template: &Path, user: &str) -> Option<PathBuf> {
    // A user name that could climb out of a per-user directory gets no file.
    if user.is_empty() || user.contains('/') || user.starts_with('.') {
        return None;
    }
    let text = template.to_string_lossy();
    let text = text.replace("%u", user);
    Some(match text.strip_prefix("~/") {
        Some(rest) => reach_core::local::home_dir().join(rest),
        None => PathBuf::from(text),
    })
}

/// Reads the keys for `user` from `path`; a missing file is no keys.
pub fn load_keys(path: &Path) -> (Vec<AuthorizedKey>, Vec<String>) {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_authorized_keys(&text),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => (Vec::new(), Vec::new()),
        Err(e) => (Vec::new(), vec![format!("{}: {e}", path.display())]),
    }
}

/// Checks that `phc` is an argon2 hash in PHC form.
pub fn check_phc(phc: &str) -> Result<()> {
    let hash = PasswordHash::new(phc).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("not a PHC hash string ({e}); make one with `reach serve --hash-password`"),
        )
    })?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("the hash is {}, not argon2", hash.algorithm),
        ));
    }
    Ok(())
}

/// Whether `password` matches the argon2 `phc` hash.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Hashes a password with argon2id and a random salt, in PHC form.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom(&mut salt)?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::new(ErrorKind::Io, format!("encoding a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::new(ErrorKind::Io, format!("hashing the password: {e}")))
}

/// Fills `buf` from the kernel's random source.
pub fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))
}

/// Failed attempts per source address in a sliding window.
#[derive(Debug)]
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl FailureLimiter {
    /// Allows `max` failures per `window` from one address.
    pub fn new(max: u32, window: Duration) -> Self {
        FailureLimiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure from `addr`.
    pub fn fail(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        // Keep the map from growing without bound under a spray of addresses.
        if seen.len() > 10_000 {
            let window = self.window;
            seen.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < window));
        }
        seen.entry(addr).or_default().push(now);
    }

    /// Whether `addr` has used up its failures.
    pub fn blocked(&self, addr: IpAddr) -> bool {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        match seen.get_mut(&addr) {
            Some(times) => {
                times.retain(|t| now.duration_since(*t) < self.window);
                times.len() >= self.max as usize
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    #[test]
    fn options_are_honoured_or_the_line_is_skipped() {
        let text = format!(
            "# comment\n\
             ssh-ed25519 {KEY} plain\n\
             from=\"10.0.0.*,!10.0.0.5\",no-pty ssh-ed25519 {KEY} restricted\n\
             command=\"/bin/true\" ssh-ed25519 {KEY} forced\n\
             restrict ssh-ed25519 {KEY}\n\
             garbage\n\
             no-port-forwarding ssh-ed25519 {KEY}\n\
             restrict,port-forwarding ssh-ed25519 {KEY}\n"
        );
        let (keys, skipped) = parse_authorized_keys(&text);
        assert_eq!(keys.len(), 5);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("command"), "{skipped:?}");
        assert_eq!(keys[0].permissions, Permissions::ALL);
        assert!(!keys[1].permissions.pty && keys[1].permissions.agent_forwarding);
        assert!(!keys[2].permissions.pty && !keys[2].permissions.agent_forwarding);
        assert!(keys[1].permissions.port_forwarding && !keys[2].permissions.port_forwarding);
        assert!(keys[3].permissions.pty && !keys[3].permissions.port_forwarding);
        assert!(!keys[4].permissions.pty && keys[4].permissions.port_forwarding);
        let key = keys[1].key.clone();
        assert!(keys[1].admits(&key, Some("10.0.0.7".parse().unwrap())));
        assert!(!keys[1].admits(&key, Some("10.0.0.5".parse().unwrap())));
        assert!(!keys[1].admits(&key, Some("10.0.1.7".parse().unwrap())));
        assert!(!keys[1].admits(&key, None));
    }

    /// A `from=` pattern written to make a backtracking matcher take exponential time is
    /// answered at once (the gateway checks it on every login attempt).
    #[test]
    fn a_hostile_from_pattern_is_answered_at_once() {
        let addr: IpAddr = "1111:1111:1111:1111:1111:1111:1111:1111".parse().unwrap();
        let hostile = vec![format!("{}x", "*1".repeat(16))];
        assert!(!from_matches(&hostile, addr));
        let plain = vec!["1111:*".to_owned(), "!*:2222".to_owned()];
        assert!(from_matches(&plain, addr));
    }

    #[test]
    fn cidr_and_mapped_addresses() {
        let p = vec!["127.0.0.0/8".to_owned()];
        assert!(from_matches(&p, "127.1.2.3".parse().unwrap()));
        assert!(from_matches(&p, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!from_matches(&p, "128.0.0.1".parse().unwrap()));
        assert!(from_matches(
            &["::1/128".to_owned()],
            "::1".parse().unwrap()
        ));
    }

    #[test]
    fn passwords_round_trip() {
        let phc = hash_password("correct horse").unwrap();
        check_phc(&phc).unwrap();
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "battery staple"));
        assert!(check_phc("plaintext").is_err());
    }

    #[test]
    fn the_limiter_counts_per_address_in_a_window() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        limiter.fail(a);
        assert!(!limiter.blocked(a));
        limiter.fail(a);
        assert!(limiter.blocked(a));
        assert!(!limiter.blocked(b));
        assert!(keys_path(Path::new("/k/%u"), "../etc").is_none());
        assert_eq!(
            keys_path(Path::new("/k/%u"), "ann").unwrap(),
            Path::new("/k/ann")
        );
    }
}
