//! The core abstraction of reach: what every backend implements and every caller uses.
//!
//! This crate owns:
//! - [`Destination`] and [`Location`]: parsing of `local`, `ssh://[user@]host[:port]`, bare
//!   `[user@]host[:port]`, `docker://name`, bracketed IPv6, and `DEST:PATH` file arguments.
//! - The object-safe traits [`Backend`], [`Process`] and [`FileSystem`], used as
//!   `Arc<dyn Backend>` so that a caller never needs to know which target it talks to.
//! - The value types around them: [`ExecSpec`], [`ExitStatus`], [`Signal`], [`Platform`],
//!   [`Metadata`].
//! - [`BackendKind`] and [`Capabilities`]: which backend serves a target and what it can do,
//!   so that callers choose a path up front.
//! - [`glob`]: wildcards in remote paths, expanded through [`FileSystem`] on any target;
//!   [`pattern`]: the one wildcard matcher every pattern in reach uses; [`path`]: joining
//!   and splitting paths on a target; [`sync::lock`] and [`local::home_dir`], the two
//!   helpers every crate needs.
//! - One [`Error`] type with a `#[non_exhaustive]` [`ErrorKind`] that every backend maps onto.
//!
//! It holds no network or process code: that lives in the backend crates (`reach-local`,
//! `reach-ssh`, `reach-docker`, ...), which depend on this crate and never on each other.
//!
//! # The completion contract
//!
//! Every backend promises the same four things, and the conformance suite in `reach-test`
//! checks them:
//! 1. every byte the remote wrote is readable from the process streams before
//!    [`Process::wait`] returns its status;
//! 2. an [`ExitStatus`] is reported only when the remote reported one; a lost transport is
//!    [`ErrorKind::SessionDropped`], never a made-up exit 0;
//! 3. file writes through [`FileSystem`] are visible only once complete (callers build atomic
//!    transfers with [`FileSystem::rename`]);
//! 4. nothing waits forever: [`ExecSpec::timeout`] bounds a command, and dropping a
//!    [`Process`] tears the remote side down.
#![deny(missing_docs)]

mod backend;
mod capability;
mod destination;
mod error;
mod exec;
mod fs;
pub mod glob;
pub mod local;
pub mod outcome;
pub mod path;
pub mod pattern;
pub mod sync;

pub use backend::{tcp_address, tcp_connect_error, Backend, Platform, TcpTunnel};
pub use capability::{BackendKind, Capabilities, Capability};
pub use destination::{Destination, Location, DEFAULT_SCHEME};
pub use error::{Error, ErrorKind, Result, Subject};
pub use exec::{
    shell_quote, BoxRead, BoxWrite, CommandLine, ExecSpec, ExitStatus, Output, Process, ProcessExt,
    PtyRequest, PtySize, Signal, StdinMode, Streams,
};
pub use fs::{
    DirEntry, FileSystem, FileSystemExt, FileType, Metadata, TargetDigest, TreeOptions,
    WriteOptions,
};
