//! reach-agent: the helper reach runs inside a target, once per connection.
//!
//! Starting a process through a container engine (`docker exec`) costs a runc exec, tens of
//! milliseconds, and the engine cannot deliver a signal to it, tell a death by signal from an
//! `exit 143`, or kill what it started. The agent is started once; after that every command
//! is a fork/exec on the target, and those things work. It also reads, writes and hashes
//! files as the target's user, and opens TCP connections from the target.
//!
//! This crate owns both halves of what is fixed about the agent:
//! - [`protocol`]: the frame kinds, file operations and flow-control window, shared with the
//!   client side (`reach-agent-client`) so that the two cannot disagree;
//! - the `reach-agent` executable (`src/main.rs` and its modules): std, `libc` calls of its
//!   own in `sys`, and `sha2` (pure Rust), so that it builds into one static file that runs
//!   in images with no libc and no shell. `reach-agent-client`'s build step makes that file
//!   (a cargo build with the `agent` profile); this crate's build script only points it at
//!   the sources.
//!
//! It does not own how the agent reaches a target or is started there: that is the
//! client's and each backend's.
#![deny(missing_docs)]

pub mod protocol;
