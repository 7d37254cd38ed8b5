//! The `reach-agent` executable: serves one client on stdin/stdout (frames as
//! `reach_agent::protocol` lays them out) and writes diagnostics to stderr.
//!
//! When its stdin ends (the connection is gone), it kills the process group of every command
//! it started and exits: nothing outlives the connection.
//!
//! One module per concern: `serve` (the frame loop), `process` (commands), `flow` (output
//! windows), `tcp`, `files`, `hash`, `frames` (encoding), `sys` (libc).

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::thread;

mod files;
mod flow;
mod frames;
mod hash;
mod process;
mod serve;
mod sys;
mod tcp;

/// Locks `mutex`, taking it over from a thread that panicked while holding it (the data
/// stays usable: every critical section leaves it consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a thread, or says why the system has none to give instead of panicking.
fn spawn_thread(f: impl FnOnce() + Send + 'static) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().spawn(f)
}

fn main() {
    serve::run();
}
