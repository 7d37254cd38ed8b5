//! Warm connections across CLI calls.
//!
//! The first `reach exec` on an SSH or Docker destination starts a per-user background
//! process, the *connection daemon* (`reach connections daemon`). It listens on a Unix socket in
//! a private runtime directory, opens the connection, runs the command on it and keeps the
//! connection afterwards; later calls with the same destination and connection settings send
//! their command to it and pay no handshake. The daemon closes a connection unused for its idle
//! time and exits when it holds none.
//!
//! The protocol is frames of `[kind: u8][length: u32 big-endian][payload]`: one JSON request,
//! then, for an exec, stdin/signal frames one way and stdout/stderr/exit frames the other. All
//! output frames precede the exit frame, so the completion contract holds through the daemon.

pub mod client;
pub mod daemon;

mod conn;
mod errors;
mod frames;
mod request;
mod runtime;

use std::time::Duration;

pub use conn::ConnWire;
pub use errors::{error_from_json, error_json, error_value};
pub use frames::{frame, read_frame, write_frame};
pub use request::{ExecRequest, Request};
pub use runtime::*;

/// How long the daemon keeps an unused connection (and itself, once it holds none).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
