//! The algorithms a connection offers: reach's defaults, changed by the client
//! configuration's `KexAlgorithms`, `HostKeyAlgorithms`, `Ciphers` and `MACs` as
//! `ssh_config(5)` describes them. A list that starts with `+` adds to the defaults, `-`
//! removes from them (wildcards allowed), `^` puts its algorithms first; any other list
//! replaces them. Names OpenSSH knows and reach does not implement are passed over; a name
//! nobody knows is an error, as is a list that leaves nothing reach can use.
//!
//! The defaults are OpenSSH's, less what reach cannot do: its own order for key exchange
//! (no NIST curves, no post-quantum `sntrup761`), AES-GCM first for ciphers, and host keys
//! without `ssh-rsa` (SHA-1 signatures), which OpenSSH dropped from its defaults in 8.8.

use std::borrow::Cow;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{cipher, kex, mac};

use reach_core::pattern::wildcard_ignore_ascii_case;

/// One of the configurable lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Kex,
    HostKey,
    Cipher,
    Mac,
}

/// Key exchange names OpenSSH knows and reach does not implement.
const FOREIGN_KEX: &[&str] = &[
    "sntrup761x25519-sha512@openssh.com",
    "sntrup761x25519-sha512",
];
/// Cipher names OpenSSH knows and reach does not implement.
const FOREIGN_CIPHERS: &[&str] = &["rijndael-cbc@lysator.liu.se"];
/// MAC names OpenSSH knows and reach does not implement.
const FOREIGN_MACS: &[&str] = &[
    "umac-64-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "umac-64@openssh.com",
    "umac-128@openssh.com",
    "hmac-md5",
    "hmac-md5-96",
    "hmac-sha1-96",
    "hmac-md5-etm@openssh.com",
    "hmac-md5-96-etm@openssh.com",
    "hmac-sha1-96-etm@openssh.com",
];
/// Host key names OpenSSH knows and reach does not implement.
const FOREIGN_HOST_KEYS: &[&str] = &[
    "ssh-dss",
    "ssh-dss-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "sk-ssh-ed25519@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Host key algorithms reach can check, most preferred first; the last, `ssh-rsa`, is not
/// offered unless asked for.
const HOST_KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
    Algorithm::Rsa { hash: None },
];

/// Host certificate types reach can check: all but `ssh-rsa`'s.
const HOST_CERTIFICATES: &[Algorithm] = HOST_KEYS.split_at(HOST_KEYS.len() - 1).0;

/// Ciphers by default: AES-GCM first, which runs on the CPU's AES instructions (ring) and is
/// the fastest here; then OpenSSH's own default order.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

impl Kind {
    /// The configuration keyword that sets this list.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Kind::Kex => "KexAlgorithms",
            Kind::HostKey => "HostKeyAlgorithms",
            Kind::Cipher => "Ciphers",
            Kind::Mac => "MACs",
        }
    }

    /// What one entry of the list is.
    fn what(self) -> &'static str {
        match self {
            Kind::Kex => "key exchange algorithm",
            Kind::HostKey => "host key algorithm",
            Kind::Cipher => "cipher",
            Kind::Mac => "MAC",
        }
    }

    /// Every name reach implements.
    fn known(self) -> Vec<String> {
        match self {
            Kind::Kex => kex::ALL_KEX_ALGORITHMS
                .iter()
                .filter(|k| ***k != kex::NONE)
                .map(|k| k.as_ref().to_owned())
                .collect(),
            Kind::HostKey => host_key_names(HOST_KEYS, HOST_CERTIFICATES),
            Kind::Cipher => cipher::ALL_CIPHERS
                .iter()
                .filter(|c| ***c != cipher::NONE && ***c != cipher::CLEAR)
                .map(|c| c.as_ref().to_owned())
                .collect(),
            Kind::Mac => mac::ALL_MAC_ALGORITHMS
                .iter()
                .filter(|m| ***m != mac::NONE)
                .map(|m| m.as_ref().to_owned())
                .collect(),
        }
    }

    /// What is offered when the configuration says nothing.
    fn defaults(self) -> Vec<String> {
        match self {
            Kind::Kex => russh::Preferred::DEFAULT
                .kex
                .iter()
                .filter(|k| {
                    !EXTENSIONS.contains(k)
                        && **k != kex::EXTENSION_SUPPORT_AS_SERVER
                        && **k != kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER
                })
                .map(|k| k.as_ref().to_owned())
                .collect(),
            Kind::HostKey => host_key_names(&HOST_KEYS[..HOST_KEYS.len() - 1], HOST_CERTIFICATES),
            Kind::Cipher => CIPHERS.iter().map(|c| c.as_ref().to_owned()).collect(),
            Kind::Mac => russh::Preferred::DEFAULT
                .mac
                .iter()
                .map(|m| m.as_ref().to_owned())
                .collect(),
        }
    }

    fn foreign(self) -> &'static [&'static str] {
        match self {
            Kind::Kex => FOREIGN_KEX,
            Kind::HostKey => FOREIGN_HOST_KEYS,
            Kind::Cipher => FOREIGN_CIPHERS,
            Kind::Mac => FOREIGN_MACS,
        }
    }
}

/// The key exchange extensions a client always offers: `ext-info-c` and OpenSSH's strict key
/// exchange (the Terrapin fix), whatever `KexAlgorithms` says.
const EXTENSIONS: &[kex::Name] = &[
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// Certificate names first, as OpenSSH lists them, then the plain ones.
fn host_key_names(keys: &[Algorithm], certificates: &[Algorithm]) -> Vec<String> {
    certificates
        .iter()
        .map(Algorithm::to_certificate_type)
        .chain(keys.iter().map(|k| k.as_str().to_owned()))
        .collect()
}

/// The list `spec` (a configuration value) makes of `kind`'s defaults, or why it cannot be
/// used (a sentence to follow "`value` is not ...").
pub(crate) fn apply(kind: Kind, spec: &str) -> Result<Vec<String>, String> {
    let defaults = kind.defaults();
    let (mode, list) = match spec.chars().next() {
        Some(c @ ('+' | '-' | '^')) => (Some(c), &spec[1..]),
        _ => (None, spec),
    };
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(format!("a list of {}s", kind.what()));
    }
    let list = if mode == Some('-') {
        defaults
            .into_iter()
            .filter(|d| {
                !names
                    .iter()
                    .any(|pattern| wildcard_ignore_ascii_case(pattern, d))
            })
            .collect()
    } else {
        let known = kind.known();
        let mut chosen: Vec<String> = Vec::new();
        for name in names {
            if known.iter().any(|k| k == name) {
                if !chosen.iter().any(|c| c == name) {
                    chosen.push(name.to_owned());
                }
            } else if !kind.foreign().contains(&name) {
                return Err(format!(
                    "a list of {}s: `{name}` is not one (reach knows {})",
                    kind.what(),
                    known.join(", ")
                ));
            }
        }
        match mode {
            Some('+') => {
                let mut list = defaults;
                for name in chosen {
                    if !list.contains(&name) {
                        list.push(name);
                    }
                }
                list
            }
            Some('^') => {
                let rest: Vec<String> = defaults
                    .into_iter()
                    .filter(|d| !chosen.contains(d))
                    .collect();
                chosen.into_iter().chain(rest).collect()
            }
            _ => chosen,
        }
    };
    if list.is_empty() {
        return Err(format!(
            "a list that leaves a {} reach implements (it implements {})",
            kind.what(),
            kind.known().join(", ")
        ));
    }
    Ok(list)
}

/// What a connection offers, each list most preferred first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Algorithms {
    kex: Vec<kex::Name>,
    host_keys: Vec<Algorithm>,
    /// Host certificate types, asked for only where an authority is trusted for the host.
    host_certificates: Vec<Algorithm>,
    ciphers: Vec<cipher::Name>,
    macs: Vec<mac::Name>,
}

impl Algorithms {
    /// The lists the four configuration values (each `None` where the configuration says
    /// nothing) make; errors as [`apply`]'s.
    pub(crate) fn from_config(
        kex: Option<&str>,
        host_keys: Option<&str>,
        ciphers: Option<&str>,
        macs: Option<&str>,
    ) -> Result<Algorithms, String> {
        let list = |kind: Kind, spec: Option<&str>| match spec {
            Some(spec) => apply(kind, spec),
            None => Ok(kind.defaults()),
        };
        let host_key_names = list(Kind::HostKey, host_keys)?;
        let named = |algorithm: &Algorithm, certificate: bool| {
            let name = if certificate {
                algorithm.to_certificate_type()
            } else {
                algorithm.as_str().to_owned()
            };
            host_key_names.iter().position(|n| *n == name)
        };
        let ordered = |candidates: &[Algorithm], certificate: bool| {
            let mut found: Vec<(usize, Algorithm)> = candidates
                .iter()
                .filter_map(|a| named(a, certificate).map(|i| (i, a.clone())))
                .collect();
            found.sort_by_key(|(i, _)| *i);
            found.into_iter().map(|(_, a)| a).collect::<Vec<_>>()
        };
        let host_keys = ordered(HOST_KEYS, false);
        if host_keys.is_empty() {
            return Err(format!(
                "a list of host key algorithms with a plain key among them (a certificate \
                 alone cannot be checked without one): reach knows {}",
                Kind::HostKey.known().join(", ")
            ));
        }
        Ok(Algorithms {
            kex: list(Kind::Kex, kex)?
                .iter()
                .filter_map(|n| kex::Name::try_from(n.as_str()).ok())
                .chain(EXTENSIONS.iter().copied())
                .collect(),
            host_certificates: ordered(HOST_CERTIFICATES, true),
            host_keys,
            ciphers: list(Kind::Cipher, ciphers)?
                .iter()
                .filter_map(|n| cipher::Name::try_from(n.as_str()).ok())
                .collect(),
            macs: list(Kind::Mac, macs)?
                .iter()
                .filter_map(|n| mac::Name::try_from(n.as_str()).ok())
                .collect(),
        })
    }

    /// russh's preferences for a connection; `certificates` asks for host certificates.
    pub(crate) fn preferred(&self, certificates: bool) -> russh::Preferred {
        russh::Preferred {
            kex: Cow::Owned(self.kex.clone()),
            key: Cow::Owned(self.host_keys.clone()),
            host_key_certificates: if certificates {
                Cow::Owned(self.host_certificates.clone())
            } else {
                Cow::Borrowed(&[])
            },
            cipher: Cow::Owned(self.ciphers.clone()),
            mac: Cow::Owned(self.macs.clone()),
            ..Default::default()
        }
    }
}

/// Advice for a handshake that found no algorithm in common: which keyword to change, and
/// with which of the server's names that reach implements.
pub(crate) fn advice(kind: &russh::AlgorithmKind, theirs: &[String]) -> String {
    let kind = match kind {
        russh::AlgorithmKind::Kex => Kind::Kex,
        russh::AlgorithmKind::Key => Kind::HostKey,
        russh::AlgorithmKind::Cipher => Kind::Cipher,
        russh::AlgorithmKind::Mac => Kind::Mac,
        russh::AlgorithmKind::Compression => {
            return "the server insists on compression, which reach does not do".to_owned()
        }
    };
    let known = kind.known();
    let usable: Vec<&String> = theirs.iter().filter(|t| known.contains(t)).collect();
    match usable.first() {
        Some(name) => format!(
            "the server offers no {} reach is set to use; if it can do no better, allow one \
             of its own with `{}=+{name}` (`-o` or the SSH config)",
            kind.what(),
            kind.keyword()
        ),
        None => format!(
            "the server offers no {} reach implements (its: {})",
            kind.what(),
            theirs.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(kind: Kind, spec: &str) -> Vec<String> {
        apply(kind, spec).unwrap()
    }

    #[test]
    fn plus_minus_caret_and_replace() {
        let defaults = Kind::Kex.defaults();
        assert_eq!(defaults[0], "mlkem768x25519-sha256");
        let added = names(Kind::Kex, "+diffie-hellman-group14-sha1");
        assert_eq!(
            added.last().map(String::as_str),
            Some("diffie-hellman-group14-sha1")
        );
        assert_eq!(added.len(), defaults.len() + 1);
        let removed = names(Kind::Kex, "-diffie-hellman-*,mlkem768x25519-sha256");
        assert_eq!(
            removed,
            ["curve25519-sha256", "curve25519-sha256@libssh.org"]
        );
        let first = names(Kind::Cipher, "^aes128-ctr");
        assert_eq!(first[0], "aes128-ctr");
        assert_eq!(first.len(), CIPHERS.len());
        assert_eq!(
            names(Kind::Mac, "hmac-sha1, hmac-sha2-256"),
            ["hmac-sha1", "hmac-sha2-256"]
        );
    }

    #[test]
    fn foreign_names_are_passed_over_and_unknown_ones_refused() {
        assert_eq!(
            names(
                Kind::Kex,
                "sntrup761x25519-sha512@openssh.com,curve25519-sha256"
            ),
            ["curve25519-sha256"]
        );
        let typo = apply(Kind::Kex, "curve25519-sha265").unwrap_err();
        assert!(typo.contains("`curve25519-sha265` is not one"), "{typo}");
        assert!(typo.contains("curve25519-sha256"), "{typo}");
        let nothing = apply(Kind::Mac, "umac-64@openssh.com").unwrap_err();
        assert!(
            nothing.contains("leaves a MAC reach implements"),
            "{nothing}"
        );
        assert!(apply(Kind::Cipher, "+").is_err());
    }

    #[test]
    fn host_keys_drop_sha1_rsa_unless_asked_and_certificates_follow_the_list() {
        let default = Algorithms::from_config(None, None, None, None).unwrap();
        assert!(!default.host_keys.contains(&Algorithm::Rsa { hash: None }));
        assert_eq!(default.host_certificates, HOST_CERTIFICATES);
        let old = Algorithms::from_config(None, Some("+ssh-rsa"), None, None).unwrap();
        assert_eq!(old.host_keys.last(), Some(&Algorithm::Rsa { hash: None }));
        let only = Algorithms::from_config(
            None,
            Some("ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256,ssh-ed25519"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            only.host_keys,
            [
                Algorithm::Ecdsa {
                    curve: EcdsaCurve::NistP256
                },
                Algorithm::Ed25519
            ]
        );
        assert_eq!(only.host_certificates, [Algorithm::Ed25519]);
        assert!(Algorithms::from_config(
            None,
            Some("ssh-ed25519-cert-v01@openssh.com"),
            None,
            None
        )
        .is_err());
        // The extensions are offered whatever the list.
        let kex = Algorithms::from_config(Some("curve25519-sha256"), None, None, None).unwrap();
        assert_eq!(
            kex.kex,
            [
                kex::CURVE25519,
                kex::EXTENSION_SUPPORT_AS_CLIENT,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT
            ]
        );
    }
}
