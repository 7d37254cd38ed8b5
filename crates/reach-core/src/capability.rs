//! What a backend is and what it can do, said up front so that callers choose a path instead
//! of calling and getting [`crate::ErrorKind::Unsupported`].
//!
//! A [`BackendKind`] names the backend type; [`Capabilities`] is the set of optional things
//! a [`crate::Backend`] (commands, connections) and its [`crate::FileSystem`] (files) offer.
//! Both are printed by `reach info --json`, and a plugin backend will answer its capability
//! probe with the same names ([`Capability::as_str`]).

use std::fmt;

/// Which backend serves a target. New kinds may be added; match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// This machine (`reach-local`).
    Local,
    /// An SSH server, files through SFTP (`reach-ssh`).
    Ssh,
    /// A container through the Docker Engine API (`reach-docker`).
    Docker,
    /// A root file system on this host, entered with `proot` (`reach-proot`).
    Proot,
    /// A program that speaks reach's plugin protocol (`reach-plugin`); it serves whichever
    /// scheme it is configured for, so its name here is `plugin`.
    Plugin,
}

impl BackendKind {
    /// Every kind, in declaration order.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Local,
        BackendKind::Ssh,
        BackendKind::Docker,
        BackendKind::Proot,
        BackendKind::Plugin,
    ];

    /// The destination scheme this kind serves (`local`, `ssh`, `docker`); also its name in
    /// `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Ssh => "ssh",
            BackendKind::Docker => "docker",
            BackendKind::Proot => "proot",
            BackendKind::Plugin => "plugin",
        }
    }

    /// The kind that serves destinations of `scheme`, if a built-in one does.
    pub fn from_scheme(scheme: &str) -> Option<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(scheme))
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One optional thing a backend or its file system can do. New capabilities may be added;
/// match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// [`crate::Process::signal`] reaches the command and what it started.
    Signals,
    /// Commands can run under a pseudo-terminal ([`crate::ExecSpec::pty`]).
    Pty,
    /// [`crate::Backend::connect_tcp`] opens TCP connections from the target.
    Tcp,
    /// Commands and files go through reach's agent running on the target.
    Agent,
    /// Making a connection costs enough (a handshake, a helper to start) that keeping it
    /// open across calls pays, as the CLI's connection daemon does.
    KeepConnection,
    /// The files are this machine's own: a path means the same here and on the target.
    HostFiles,
    /// [`crate::FileSystem::sha256`] hashes a file on the target.
    Sha256,
    /// [`crate::FileSystem::open_write_hashed`] hashes what lands as it is written.
    HashedWrite,
    /// [`crate::FileSystem::write_tree`] unpacks a tar stream into a new directory.
    WriteTree,
    /// [`crate::FileSystem::read_tree`] packs a tree into a tar stream.
    ReadTree,
    /// [`crate::FileSystem::sha256_tree`] hashes every file of a tree on the target.
    Sha256Tree,
    /// [`crate::FileSystem::sync_tree`] flushes a tree to stable storage.
    SyncTree,
    /// [`crate::FileSystem::set_modified`] sets a file's modification time.
    SetModified,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 13] = [
        Capability::Signals,
        Capability::Pty,
        Capability::Tcp,
        Capability::Agent,
        Capability::KeepConnection,
        Capability::HostFiles,
        Capability::Sha256,
        Capability::HashedWrite,
        Capability::WriteTree,
        Capability::ReadTree,
        Capability::Sha256Tree,
        Capability::SyncTree,
        Capability::SetModified,
    ];

    /// A short lowercase name, stable for scripts and for the plugin protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Signals => "signals",
            Capability::Pty => "pty",
            Capability::Tcp => "tcp",
            Capability::Agent => "agent",
            Capability::KeepConnection => "keep_connection",
            Capability::HostFiles => "host_files",
            Capability::Sha256 => "sha256",
            Capability::HashedWrite => "hashed_write",
            Capability::WriteTree => "write_tree",
            Capability::ReadTree => "read_tree",
            Capability::Sha256Tree => "sha256_tree",
            Capability::SyncTree => "sync_tree",
            Capability::SetModified => "set_modified",
        }
    }

    /// The capability whose [`Capability::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Capability`] values.
///
/// A capability a target depends on tools for (an SSH server's `tar` or Python) says that
/// the backend has the path; a target without the tool still answers
/// [`crate::ErrorKind::Unsupported`] when it is used, and callers then take the plain path.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability at all.
    pub const fn none() -> Capabilities {
        Capabilities(0)
    }

    /// The set of `capabilities`.
    pub fn of(capabilities: &[Capability]) -> Capabilities {
        capabilities
            .iter()
            .fold(Capabilities::none(), |set, c| set.with(*c))
    }

    /// This set with `capability` added.
    #[must_use]
    pub fn with(self, capability: Capability) -> Capabilities {
        Capabilities(self.0 | capability.bit())
    }

    /// This set with `capability` taken out.
    #[must_use]
    pub fn without(self, capability: Capability) -> Capabilities {
        Capabilities(self.0 & !capability.bit())
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// Whether `capability` is in the set.
    pub fn has(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    /// The capabilities in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL.into_iter().filter(move |c| self.has(*c))
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for capability in Capability::ALL {
            assert_eq!(Capability::from_name(capability.as_str()), Some(capability));
        }
        let names: std::collections::HashSet<_> =
            Capability::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Capability::ALL.len());
        for kind in BackendKind::ALL {
            assert_eq!(BackendKind::from_scheme(kind.as_str()), Some(kind));
        }
        assert_eq!(
            BackendKind::from_scheme("DOCKER"),
            Some(BackendKind::Docker)
        );
        assert_eq!(BackendKind::from_scheme("lxd"), None);
    }

    #[test]
    fn a_set_holds_what_was_added_and_nothing_else() {
        let set = Capabilities::of(&[Capability::Pty, Capability::Sha256]);
        assert!(set.has(Capability::Pty) && set.has(Capability::Sha256));
        assert!(!set.has(Capability::Signals));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [Capability::Pty, Capability::Sha256]
        );
        let fewer = set.without(Capability::Pty);
        assert!(!fewer.has(Capability::Pty) && fewer.has(Capability::Sha256));
        assert_eq!(
            fewer.union(Capabilities::of(&[Capability::Tcp])),
            Capabilities::of(&[Capability::Sha256, Capability::Tcp])
        );
        assert_eq!(Capabilities::none().iter().count(), 0);
    }
}
