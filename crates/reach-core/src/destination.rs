//! Parsing of destinations (`local`, `ssh://user@host:22`, `docker://web`, `[::1]:2222`) and of
//! file arguments (`DEST:PATH`).
//!
//! Parsing is purely syntactic: whether a scheme has a backend compiled in is the registry's
//! question (in the `reach` facade), so that plugin schemes parse like built-in ones. Every
//! rejection names the input, lists every problem found, and says which form was expected.

use std::fmt;
use std::net::Ipv6Addr;

use crate::{Error, ErrorKind, Result};

/// The scheme of a destination written without one (`user@host`): SSH, as in `ssh` and `scp`.
pub const DEFAULT_SCHEME: &str = "ssh";

/// Where to run: a scheme (`local`, `ssh`, `docker`, ...) and the address within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    scheme: String,
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

impl Destination {
    /// The local host.
    pub fn local() -> Self {
        Destination {
            scheme: "local".to_owned(),
            user: None,
            host: String::new(),
            port: None,
        }
    }

    /// Parses a destination; a bare `[user@]host[:port]` gets [`DEFAULT_SCHEME`].
    pub fn parse(input: &str) -> Result<Self> {
        Self::parse_with_default(input, DEFAULT_SCHEME)
    }

    /// Parses a destination; a bare `[user@]host[:port]` gets `default_scheme`.
    pub fn parse_with_default(input: &str, default_scheme: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "empty destination: expected `local`, `ssh://[user@]host[:port]`, \
                 `[user@]host[:port]` or `docker://container`",
            ));
        }
        if input == "local" {
            return Ok(Destination::local());
        }
        let mut problems = Vec::new();
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            problems.push(format!("it contains the character {c:?}"));
        }
        let (scheme, rest) = match input.split_once("://") {
            Some((scheme, rest)) => {
                if !is_valid_scheme(scheme) {
                    problems.push(format!(
                        "`{scheme}` is not a scheme name (letters, digits, `+`, `-`, `.`, \
                         starting with a letter)"
                    ));
                }
                (scheme.to_ascii_lowercase(), rest)
            }
            None => (default_scheme.to_owned(), input),
        };
        if scheme == "proot" {
            return Destination::parse_proot(input, rest, problems);
        }
        if let Some((_, path)) = rest.split_once('/') {
            problems.push(format!(
                "unexpected path `/{path}` (file arguments take `DEST:PATH`)"
            ));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let mut dest = Destination {
            scheme,
            user: None,
            host: String::new(),
            port: None,
        };
        let expected = match dest.scheme.as_str() {
            "local" => {
                if !authority.is_empty() {
                    problems.push(format!("`local` takes no address, found `{authority}`"));
                }
                "`local`"
            }
            "docker" => {
                dest.parse_container(authority, &mut problems);
                "`docker://[user@]container`"
            }
            _ => {
                dest.parse_authority(authority, &mut problems);
                "`[scheme://][user@]host[:port]`"
            }
        };
        if problems.is_empty() {
            Ok(dest)
        } else {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "invalid destination `{}`: {}; expected {expected}",
                    input.escape_debug(),
                    problems.join("; ")
                ),
            ))
        }
    }

    /// `proot://ROOT`: everything after the scheme is the root file system's directory on
    /// this host (absolute, or relative to the working directory); it may not hold `:`,
    /// which separates it from a path in a file argument.
    fn parse_proot(input: &str, root: &str, mut problems: Vec<String>) -> Result<Self> {
        if root.is_empty() {
            problems.push("the root directory is missing".to_owned());
        }
        if root.contains(':') {
            problems.push(format!(
                "`{root}` contains `:`, which separates a root from a path in file arguments"
            ));
        }
        if problems.is_empty() {
            return Ok(Destination {
                scheme: "proot".to_owned(),
                user: None,
                host: root.to_owned(),
                port: None,
            });
        }
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid destination `{}`: {}; expected `proot://DIR` (a root file system on \
                 this host)",
                input.escape_debug(),
                problems.join("; ")
            ),
        ))
    }

    fn parse_user<'a>(&mut self, authority: &'a str, problems: &mut Vec<String>) -> &'a str {
        match authority.rsplit_once('@') {
            Some((user, host)) => {
                if user.is_empty() {
                    problems.push("the user name before `@` is empty".to_owned());
                } else if user.contains(':') {
                    problems.push(format!(
                        "user `{user}` contains `:` (passwords do not belong in destinations)"
                    ));
                } else {
                    self.user = Some(user.to_owned());
                }
                host
            }
            None => authority,
        }
    }

    fn parse_authority(&mut self, authority: &str, problems: &mut Vec<String>) {
        let hostport = self.parse_user(authority, problems);
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            match bracketed.split_once(']') {
                Some((addr, after)) => {
                    let plain = addr.split('%').next().unwrap_or_default();
                    if plain.parse::<Ipv6Addr>().is_err() {
                        problems.push(format!("`[{addr}]` is not an IPv6 address"));
                    }
                    let port = match after.strip_prefix(':') {
                        Some(port) => Some(port),
                        None if after.is_empty() => None,
                        None => {
                            problems.push(format!("unexpected `{after}` after `[{addr}]`"));
                            None
                        }
                    };
                    (addr, port)
                }
                None => {
                    problems.push("`[` opens an IPv6 address that `]` never closes".to_owned());
                    ("", None)
                }
            }
        } else if hostport.matches(':').count() > 1 {
            problems.push(format!(
                "IPv6 address `{hostport}` must be written in brackets, as in `[::1]:22`"
            ));
            ("", None)
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            if !problems.iter().any(|p| p.contains("IPv6")) {
                problems.push("the host is missing".to_owned());
            }
        } else if hostport.starts_with('[') {
            self.host = host.to_owned();
        } else if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            problems.push(format!("host `{host}` contains {bad:?}"));
        } else {
            self.host = host.to_owned();
        }
        if let Some(port) = port {
            match port.parse::<u16>() {
                Ok(0) => problems.push("port `0` is not a usable port (1-65535)".to_owned()),
                Ok(n) if port.chars().all(|c| c.is_ascii_digit()) => self.port = Some(n),
                _ if port.is_empty() => problems.push("the port after `:` is empty".to_owned()),
                _ if port.chars().all(|c| c.is_ascii_digit()) => {
                    problems.push(format!("port `{port}` is out of range (1-65535)"))
                }
                _ => problems.push(format!("port `{port}` is not a number (1-65535)")),
            }
        }
    }

    fn parse_container(&mut self, authority: &str, problems: &mut Vec<String>) {
        let name = self.parse_user(authority, problems);
        if name.is_empty() {
            problems.push("the container name is missing".to_owned());
            return;
        }
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if first_ok && rest_ok {
            self.host = name.to_owned();
        } else {
            problems.push(format!(
                "`{name}` is not a container name or id ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
            ));
        }
    }

    /// The scheme, lowercase: `local`, `ssh`, `docker`, ...
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user named in the destination, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The host name or address (without brackets), or the container name; empty for `local`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port named in the destination, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether this is the local host.
    pub fn is_local(&self) -> bool {
        self.scheme == "local"
    }
}

impl fmt::Display for Destination {
    /// The canonical form, which parses back to the same destination.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_local() {
            return f.write_str("local");
        }
        write!(f, "{}://", self.scheme)?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Destination {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Destination::parse(s)
    }
}

fn is_valid_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A file argument: a destination and a path on it.
///
/// Accepted forms:
/// - a plain path with no `:` before its first `/` (`/etc/hosts`, `./a:b`): the local host;
/// - `local:PATH`;
/// - scp style `[user@]host:PATH` and `[user@][v6addr]:PATH` (default scheme; a relative `PATH`
///   is relative to the login directory, an empty one means the login directory);
/// - URL style `scheme://[user@]host[:port]/PATH`; `/~/PATH` there is relative to the login
///   directory. `scheme://host:PATH` is accepted too, scp style (`docker://web:/etc/hosts`,
///   `docker://web:~/notes`), unless what follows the `:` is a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// Where the file lives.
    pub destination: Destination,
    /// The path on that destination, as given (absolute, or relative to the login directory).
    pub path: String,
}

impl Location {
    /// Parses `DEST:PATH` with [`DEFAULT_SCHEME`] for bare hosts.
    pub fn parse(input: &str) -> Result<Self> {
        Self::parse_with_default(input, DEFAULT_SCHEME)
    }

    /// Parses `DEST:PATH` with `default_scheme` for bare hosts.
    pub fn parse_with_default(input: &str, default_scheme: &str) -> Result<Self> {
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "invalid file argument `{}`: {why}; expected `PATH`, `DEST:PATH` or \
                     `scheme://host/PATH`",
                    input.escape_debug()
                ),
            )
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some(path) = input.strip_prefix("local:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(invalid("the path after `local:` is empty"));
            }
            // The shell does not expand `~` after `local:`; this does, as it would.
            let path = match (path.strip_prefix('~'), std::env::var("HOME")) {
                (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => {
                    format!("{}{rest}", home.trim_end_matches('/'))
                }
                _ => path.to_owned(),
            };
            return Ok(Location {
                destination: Destination::local(),
                path,
            });
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            if !scheme.contains('/') && !is_valid_scheme(scheme) {
                return Err(invalid(&format!("`{scheme}` is not a scheme name")));
            }
            if scheme.eq_ignore_ascii_case("proot") {
                // `proot://ROOT:PATH`: the root is a host path, so only `:` ends it.
                let Some((root, path)) = rest.split_once(':') else {
                    return Err(invalid("expected `proot://ROOT:PATH`"));
                };
                let destination = Destination::parse(&format!("proot://{root}"))
                    .map_err(|e| invalid(e.message()))?;
                let path = login_relative(path).map_err(invalid)?;
                return Ok(Location { destination, path });
            }
            if is_valid_scheme(scheme) {
                // `scheme://host:PATH`, scp style after the scheme, unless what follows the
                // `:` is a port (`ssh://h:2222/srv`).
                let head = &rest[..rest.find('/').unwrap_or(rest.len())];
                let host_at = head.rfind('@').map_or(0, |i| i + 1);
                let host = &head[host_at..];
                let colon = if host.starts_with('[') {
                    host.find("]:").map(|i| i + 1)
                } else {
                    host.find(':')
                };
                if let Some(colon) = colon.map(|c| host_at + c) {
                    let after = &rest[colon + 1..];
                    let port = &after[..after.find(['/', ':']).unwrap_or(after.len())];
                    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                        let destination = Destination::parse_with_default(
                            &format!("{scheme}://{}", &rest[..colon]),
                            default_scheme,
                        )
                        .map_err(|e| invalid(e.message()))?;
                        let path = login_relative(after).map_err(invalid)?;
                        return Ok(Location { destination, path });
                    }
                }
                let (authority, path) = match rest.find('/') {
                    Some(i) => rest.split_at(i),
                    None => return Err(invalid("the path after the destination is missing")),
                };
                let authority = authority.strip_suffix(':').unwrap_or(authority);
                let destination = Destination::parse_with_default(
                    &format!("{scheme}://{authority}"),
                    default_scheme,
                )
                .map_err(|e| invalid(e.message()))?;
                let path = match path.strip_prefix("/~") {
                    Some("") => ".".to_owned(),
                    Some(rel) if rel.starts_with('/') => rel[1..].to_owned(),
                    _ => path.to_owned(),
                };
                return Ok(Location { destination, path });
            }
        }
        let split = if input.starts_with('[') {
            match input.find("]:") {
                Some(i) => Some(i + 1),
                None => return Err(invalid("`[address]` must be followed by `:PATH`")),
            }
        } else {
            input.find(':').filter(|&i| !input[..i].contains('/'))
        };
        match split {
            None => Ok(Location {
                destination: Destination::local(),
                path: input.to_owned(),
            }),
            Some(i) => {
                let destination = Destination::parse_with_default(&input[..i], default_scheme)
                    .map_err(|e| invalid(e.message()))?;
                let path = login_relative(&input[i + 1..]).map_err(invalid)?;
                Ok(Location { destination, path })
            }
        }
    }
}

/// The path of an scp-style `DEST:PATH`: relative paths are relative to the login
/// directory already, so `~/x` is `x` and `~` or nothing is `.` (as scp expands them);
/// another user's `~name` is not known here.
fn login_relative(path: &str) -> std::result::Result<String, &'static str> {
    let path = match path.strip_prefix('~') {
        None => path,
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        Some(_) => {
            return Err(
                "another user's home (`~name`) is not expanded; give its absolute \
                 path, or `./~name` for a file of that name",
            )
        }
    };
    Ok(if path.is_empty() {
        ".".to_owned()
    } else {
        path.to_owned()
    })
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.destination.is_local() {
            write!(f, "local:{}", self.path)
        } else {
            write!(f, "{}:{}", self.destination, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Destination {
        Destination::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match Destination::parse(s) {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput);
                e.to_string()
            }
        }
    }

    #[test]
    fn accepts_every_documented_form() {
        assert!(ok("local").is_local());
        let d = ok("ssh://alice@example.com:2222");
        assert_eq!(
            (d.scheme(), d.user(), d.host(), d.port()),
            ("ssh", Some("alice"), "example.com", Some(2222))
        );
        let d = ok("bob@10.0.0.1");
        assert_eq!(
            (d.scheme(), d.user(), d.host(), d.port()),
            ("ssh", Some("bob"), "10.0.0.1", None)
        );
        let d = ok("[::1]:22");
        assert_eq!((d.host(), d.port()), ("::1", Some(22)));
        assert_eq!(d.to_string(), "ssh://[::1]:22");
        let d = ok("docker://web-1");
        assert_eq!((d.scheme(), d.host()), ("docker", "web-1"));
        let d = ok("docker://root@web");
        assert_eq!((d.user(), d.host()), (Some("root"), "web"));
        let d = ok("SSH://h");
        assert_eq!(d.scheme(), "ssh");
        let d = ok("nosuch://x");
        assert_eq!(d.scheme(), "nosuch");
        let d = Destination::parse_with_default("h:5", "docker").map(|d| d.scheme().to_owned());
        assert!(d.is_err(), "docker names take no port");
    }

    /// A proot root is a host directory: slashes are its own, `:` starts a file's path.
    #[test]
    fn proot_roots_are_host_directories() {
        let d = ok("proot:///srv/roots/debian");
        assert_eq!((d.scheme(), d.host()), ("proot", "/srv/roots/debian"));
        assert_eq!(d.to_string(), "proot:///srv/roots/debian");
        assert_eq!(ok("proot://./rootfs").host(), "./rootfs");
        assert!(err("proot://").contains("root directory is missing"));
        let at = Location::parse("proot:///srv/root:/etc/passwd").unwrap();
        assert_eq!(
            (at.destination.host(), at.path.as_str()),
            ("/srv/root", "/etc/passwd")
        );
        let at = Location::parse("proot://rootfs:notes.txt").unwrap();
        assert_eq!(
            (at.destination.host(), at.path.as_str()),
            ("rootfs", "notes.txt")
        );
        assert!(Location::parse("proot:///srv/root").is_err());
    }

    #[test]
    fn rejections_name_every_bad_part() {
        let msg = err("ssh://@:99999");
        assert!(msg.contains("`ssh://@:99999`"), "{msg}");
        assert!(msg.contains("user name before `@` is empty"), "{msg}");
        assert!(msg.contains("host is missing"), "{msg}");
        assert!(msg.contains("port `99999` is out of range"), "{msg}");
        assert!(err("").contains("empty destination"));
        assert!(err("::1").contains("brackets"));
        assert!(err("h:abc").contains("port `abc` is not a number"));
        assert!(err("h:0").contains("port `0`"));
        assert!(err("h:").contains("port after `:` is empty"));
        assert!(err("[::1").contains("never closes"));
        assert!(err("[nothex]:2").contains("not an IPv6 address"));
        assert!(err("1nvalid!://x").contains("not a scheme name"));
        assert!(err("local://x").contains("takes no address"));
        assert!(err("docker://").contains("container name is missing"));
        assert!(err("docker://-bad").contains("not a container name"));
        assert!(err("ssh://h/etc").contains("unexpected path"));
        assert!(err("a b").contains("character ' '"));
    }

    #[test]
    fn file_arguments() {
        let l = |s: &str| Location::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            l("/etc/hosts"),
            Location {
                destination: Destination::local(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(l("./a:b").path, "./a:b");
        assert!(l("./a:b").destination.is_local());
        assert_eq!(l("local:/x y").path, "/x y");
        assert_eq!(l("local:///x").path, "/x");
        let h = l("alice@h:/tmp/x");
        assert_eq!(
            (h.destination.user(), h.destination.host(), h.path.as_str()),
            (Some("alice"), "h", "/tmp/x")
        );
        assert_eq!(l("h:").path, ".");
        assert_eq!(l("h:rel/x").path, "rel/x");
        assert_eq!(l("h:~").path, ".");
        assert_eq!(l("h:~/").path, ".");
        assert_eq!(l("h:~/notes/a").path, "notes/a");
        assert_eq!(l("h:./~x").path, "./~x");
        assert_eq!(l("h:/tmp/~x").path, "/tmp/~x");
        if let Ok(home) = std::env::var("HOME") {
            assert_eq!(
                l("local:~/x").path,
                format!("{}/x", home.trim_end_matches('/'))
            );
        }
        assert_eq!(l("~/x").path, "~/x", "a bare path is the shell's to expand");
        let v6 = l("[::1]:/srv");
        assert_eq!((v6.destination.host(), v6.path.as_str()), ("::1", "/srv"));
        let url = l("ssh://u@h:2222/srv/a b");
        assert_eq!(
            (url.destination.port(), url.path.as_str()),
            (Some(2222), "/srv/a b")
        );
        assert_eq!(l("ssh://h/~/notes").path, "notes");
        assert_eq!(l("docker://web:/etc/hosts").path, "/etc/hosts");
        assert_eq!(l("docker://web:~/x").path, "x");
        assert_eq!(l("docker://app@web:notes").path, "notes");
        assert_eq!(l("docker://app@web:notes").destination.user(), Some("app"));
        assert_eq!(l("ssh://h:rel/a").path, "rel/a");
        assert_eq!(l("ssh://h:").path, ".");
        assert_eq!(l("ssh://u@h:2222/srv").destination.port(), Some(2222));
        assert_eq!(l("ssh://[::1]:/srv").path, "/srv");
        assert_eq!(l("ssh://[::1]:22/srv").destination.port(), Some(22));
        assert_eq!(l("docker://web/etc/hosts").destination.host(), "web");
        for bad in [
            "",
            "local:",
            "ssh://h",
            "[::1]/x",
            "ssh://@:1/x",
            "h:~alice/x",
        ] {
            let e = Location::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    proptest! {
        #[test]
        fn no_input_panics_and_every_rejection_names_it(s in "\\PC{0,40}") {
            if let Err(e) = Destination::parse(&s) {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
                prop_assert!(e.to_string().contains(&s.escape_debug().to_string()) || s.is_empty());
                prop_assert!(e.to_string().contains("expected"));
            }
            if let Err(e) = Location::parse(&s) {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
                prop_assert!(e.to_string().contains("expected"));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(s in ".{0,60}") {
            let _ = Destination::parse(&s);
            let _ = Location::parse(&s);
        }

        #[test]
        fn canonical_form_round_trips(
            user in proptest::option::of("[a-z_][a-z0-9_.-]{0,10}"),
            host in "[a-z0-9][a-z0-9.-]{0,20}",
            v6 in proptest::option::of(any::<[u16; 8]>()),
            port in proptest::option::of(1u16..),
        ) {
            let host = match v6 {
                Some(seg) => Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7]).to_string(),
                None => host,
            };
            let d = Destination { scheme: "ssh".into(), user, host, port };
            let back = Destination::parse(&d.to_string());
            prop_assert_eq!(back.ok(), Some(d.clone()));
            let loc = Location { destination: d, path: "/p".into() };
            prop_assert_eq!(Location::parse(&loc.to_string()).ok(), Some(loc));
        }
    }
}
