//! The client side of `reach-agent`, over any byte stream.
//!
//! A backend starts the agent on its target however it can (an engine exec for a container;
//! an exec channel or a pod's exec stream next), hands its stdout and stderr as an
//! [`Output`] and its stdin as a [`Writer`] to [`AgentConn::start`], and from then on runs
//! commands ([`AgentConn::spawn`], or as a [`reach_core::Process`]: [`AgentProcess`]), TCP connections ([`AgentConn::connect`]) and file
//! operations ([`AgentConn::op`], and the streaming [`AgentReader`] / [`AgentWriter`])
//! through it, many at once, each flow-controlled on its own.
//!
//! This crate owns the frames on the wire, the routing of answers, the windows, and the
//! embedded static executable ([`AGENT`], [`install_path`], [`runs_on`]). It does not own
//! how the agent is copied to or started on a target, nor what a lost agent means for a
//! connection (restarting it is the backend's choice): those are the backends'.
#![deny(missing_docs)]

mod binary;
mod conn;
mod files;
mod pipe;
mod process;
mod wire;

pub use binary::{install_path, runs_on, AGENT};
pub use conn::{
    errno_kind, publish, AgentConn, Chunk, Op, Output, Slot, SpawnFailure, Spawned, Writer,
};
pub use files::{
    read_at, write_at, AgentReader, AgentWriter, CHUNK, WRITE_APPEND, WRITE_CREATE,
    WRITE_EXCLUSIVE, WRITE_SYNC, WRITE_TRUNCATE,
};
pub use pipe::PipeReader;
pub use process::{argv, stdin_writer, wait_slot, AgentProcess};
pub use wire::{put_bytes, Fields};
