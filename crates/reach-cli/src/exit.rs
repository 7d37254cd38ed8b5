//! Exit codes: the remote's own code passes through; reach's failures get fixed codes.

use reach::{Error, ErrorKind, ExitStatus, Subject};

/// A usage error (bad flags, a malformed destination).
pub const USAGE: i32 = 2;
/// The transport failed (as `ssh` exits).
pub const TRANSPORT: i32 = 255;
/// `--timeout` expired (as `timeout(1)` exits).
pub const TIMEOUT: i32 = 124;
/// The command exists but cannot be executed (as a shell exits).
pub const NOT_EXECUTABLE: i32 = 126;
/// The command does not exist (as a shell exits).
pub const NOT_FOUND: i32 = 127;
/// Any other failure of a reach operation.
pub const FAILURE: i32 = 1;

/// The exit code for a failed reach operation.
pub fn for_error(err: &Error) -> i32 {
    match err.kind() {
        ErrorKind::InvalidInput => USAGE,
        kind if kind.is_transport() => TRANSPORT,
        _ => FAILURE,
    }
}

/// The exit code for a command that could not start.
pub fn for_spawn_error(err: &Error) -> i32 {
    match err.kind() {
        ErrorKind::NotFound if err.subject() != Some(Subject::WorkingDirectory) => NOT_FOUND,
        ErrorKind::PermissionDenied => NOT_EXECUTABLE,
        _ => for_error(err),
    }
}

/// The exit code that mirrors a remote status: its code, or 128+N for signal N.
pub fn for_status(status: &ExitStatus) -> i32 {
    status.shell_code()
}
