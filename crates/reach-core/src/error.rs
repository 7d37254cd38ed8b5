//! One error type for every backend, with a kind a caller can branch on.

use std::fmt;
use std::sync::Arc;

/// A specialized `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
///
/// New kinds may be added; match with a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The target could not be reached (refused, no route, name not resolved).
    Unreachable,
    /// The target refused our credentials.
    AuthFailed,
    /// The target's host key is unknown, changed or revoked.
    HostKeyRejected,
    /// An operation did not finish within its time limit.
    Timeout,
    /// The transport closed before the operation finished (no exit status was received).
    SessionDropped,
    /// A file, directory, command or container does not exist.
    NotFound,
    /// The target refused the operation for lack of permission.
    PermissionDenied,
    /// The thing to create exists already.
    AlreadyExists,
    /// The backend cannot do this operation.
    Unsupported,
    /// The caller's input is malformed (a destination, a path, a mode).
    InvalidInput,
    /// The peer broke the protocol or answered something we do not understand.
    Protocol,
    /// Any other I/O failure.
    Io,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Unreachable,
        ErrorKind::AuthFailed,
        ErrorKind::HostKeyRejected,
        ErrorKind::Timeout,
        ErrorKind::SessionDropped,
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::AlreadyExists,
        ErrorKind::Unsupported,
        ErrorKind::InvalidInput,
        ErrorKind::Protocol,
        ErrorKind::Io,
    ];

    /// The kind whose [`ErrorKind::as_str`] is `name` (for errors that crossed a process
    /// boundary as text).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// A short lowercase name, stable for scripts (`--json` output uses it).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::HostKeyRejected => "host_key_rejected",
            ErrorKind::Timeout => "timeout",
            ErrorKind::SessionDropped => "session_dropped",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
        }
    }

    /// Whether this failure is of the transport rather than of the operation: the CLI exits
    /// 255 for these, as `ssh` does.
    pub fn is_transport(self) -> bool {
        matches!(
            self,
            ErrorKind::Unreachable
                | ErrorKind::AuthFailed
                | ErrorKind::HostKeyRejected
                | ErrorKind::SessionDropped
                | ErrorKind::Protocol
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which thing an error is about, where callers act differently by it (a missing command
/// exits 127, a missing working directory does not). New subjects may be added; match with a
/// wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The program a command names.
    Command,
    /// The working directory a command was to start in.
    WorkingDirectory,
    /// A file or directory on the target.
    Path,
    /// The container a destination names.
    Container,
    /// The host a destination names.
    Host,
}

impl Subject {
    /// Every subject, in declaration order.
    pub const ALL: [Subject; 5] = [
        Subject::Command,
        Subject::WorkingDirectory,
        Subject::Path,
        Subject::Container,
        Subject::Host,
    ];

    /// A short lowercase name, stable for scripts (`--json` output uses it).
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Command => "command",
            Subject::WorkingDirectory => "working_directory",
            Subject::Path => "path",
            Subject::Container => "container",
            Subject::Host => "host",
        }
    }

    /// The subject whose [`Subject::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<Subject> {
        Subject::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// An error from reach: a [`ErrorKind`], a message that names the thing concerned and what to
/// do, optionally the [`Subject`] it is about, and optionally the underlying cause.
///
/// Cheap to clone, so a backend can keep its last error for [`crate::Backend::last_error`].
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    subject: Option<Subject>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error of `kind` with a message for the user.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            subject: None,
            source: None,
        }
    }

    /// Says which thing the error is about.
    #[must_use]
    pub fn with_subject(mut self, subject: Subject) -> Self {
        self.subject = Some(subject);
        self
    }

    /// Which thing the error is about, where the backend said.
    pub fn subject(&self) -> Option<Subject> {
        self.subject
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Maps an I/O error onto an [`ErrorKind`], with `context` naming what was being done
    /// (for example ``"open `/etc/shadow` on local"``).
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = kind_of_io(&err);
        Error::new(kind, format!("{context}: {err}")).with_source(err)
    }

    /// An [`ErrorKind::Unsupported`] error for `operation` on the backend `backend`.
    pub fn unsupported(backend: &str, operation: &str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("{operation} is not supported by the {backend} backend"),
        )
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for the user, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying the same operation again may succeed (a dead connection, a timeout), as
    /// opposed to failures that will repeat (bad credentials, a missing file).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unreachable | ErrorKind::Timeout | ErrorKind::SessionDropped
        )
    }
}

/// Maps `std::io::ErrorKind` onto ours.
fn kind_of_io(err: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match err.kind() {
        Io::NotFound => ErrorKind::NotFound,
        Io::PermissionDenied => ErrorKind::PermissionDenied,
        Io::AlreadyExists => ErrorKind::AlreadyExists,
        Io::TimedOut => ErrorKind::Timeout,
        Io::InvalidInput | Io::InvalidData => ErrorKind::InvalidInput,
        Io::Unsupported => ErrorKind::Unsupported,
        Io::ConnectionRefused | Io::HostUnreachable | Io::NetworkUnreachable => {
            ErrorKind::Unreachable
        }
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
            ErrorKind::SessionDropped
        }
        _ => match err.raw_os_error() {
            Some(code) if code == ENOTDIR || code == EISDIR || code == ENOTEMPTY => {
                ErrorKind::InvalidInput
            }
            _ => ErrorKind::Io,
        },
    }
}

// Linux errno values; the io::ErrorKind variants for these are not all stable.
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const ENOTEMPTY: i32 = 39;

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(subject) = self.subject {
            d.field("subject", &subject);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match err.kind {
            ErrorKind::NotFound => Io::NotFound,
            ErrorKind::PermissionDenied => Io::PermissionDenied,
            ErrorKind::AlreadyExists => Io::AlreadyExists,
            ErrorKind::Timeout => Io::TimedOut,
            ErrorKind::InvalidInput => Io::InvalidInput,
            ErrorKind::Unsupported => Io::Unsupported,
            ErrorKind::SessionDropped => Io::ConnectionAborted,
            ErrorKind::Unreachable => Io::ConnectionRefused,
            _ => Io::Other,
        };
        std::io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds_and_keep_context() {
        let err = Error::io(
            "open `/x` on local",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().starts_with("open `/x` on local: "));
        let enotdir = Error::io(
            "read_dir `/etc/hosts`",
            std::io::Error::from_raw_os_error(20),
        );
        assert_eq!(enotdir.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn every_subject_comes_back_from_its_name_and_is_kept() {
        for subject in Subject::ALL {
            assert_eq!(Subject::from_name(subject.as_str()), Some(subject));
        }
        assert_eq!(Subject::from_name("no_such_subject"), None);
        let err = Error::new(ErrorKind::NotFound, "gone");
        assert_eq!(err.subject(), None);
        let err = err.with_subject(Subject::WorkingDirectory);
        assert_eq!(err.clone().subject(), Some(Subject::WorkingDirectory));
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn every_kind_comes_back_from_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("no_such_kind"), None);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(Error::new(ErrorKind::Timeout, "t").is_retryable());
        assert!(Error::new(ErrorKind::SessionDropped, "t").is_retryable());
        assert!(!Error::new(ErrorKind::AuthFailed, "t").is_retryable());
        assert!(!Error::new(ErrorKind::NotFound, "t").is_retryable());
    }
}
