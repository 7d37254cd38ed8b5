//! What a copy is asked to do, and the counters a progress display reads while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// How to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Copy directory trees.
    pub recursive: bool,
    /// Keep permission bits exactly and modification times.
    pub preserve: bool,
    /// Continue from temporaries left by an interrupted copy, and keep them on failure.
    pub resume: bool,
    /// Files copied at once (at least 1).
    pub concurrency: usize,
    /// Hash the written copy and compare it with what was sent (on by default).
    pub verify: bool,
    /// Flush each file to stable storage before renaming it into place (on by default).
    pub sync: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            recursive: false,
            preserve: false,
            resume: false,
            concurrency: 32,
            verify: true,
            sync: true,
        }
    }
}

impl CopyOptions {
    /// Sets [`CopyOptions::recursive`].
    pub fn recursive(mut self, on: bool) -> Self {
        self.recursive = on;
        self
    }
    /// Sets [`CopyOptions::preserve`].
    pub fn preserve(mut self, on: bool) -> Self {
        self.preserve = on;
        self
    }
    /// Sets [`CopyOptions::resume`].
    pub fn resume(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }
    /// Sets [`CopyOptions::concurrency`].
    pub fn concurrency(mut self, files: usize) -> Self {
        self.concurrency = files.max(1);
        self
    }
    /// Sets [`CopyOptions::verify`].
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }
    /// Sets [`CopyOptions::sync`].
    pub fn sync(mut self, on: bool) -> Self {
        self.sync = on;
        self
    }
}

/// Counters a progress display reads while a copy runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub(crate) total_bytes: AtomicU64,
    pub(crate) total_files: AtomicU64,
    pub(crate) done_bytes: AtomicU64,
    pub(crate) done_files: AtomicU64,
}

impl Progress {
    /// Bytes of the files found so far (grows while a tree is walked).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }
    /// Files found so far.
    pub fn total_files(&self) -> u64 {
        self.total_files.load(Ordering::Relaxed)
    }
    /// Bytes copied (or found already in place by a resume).
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes.load(Ordering::Relaxed)
    }
    /// Files finished, copied or failed.
    pub fn done_files(&self) -> u64 {
        self.done_files.load(Ordering::Relaxed)
    }
    pub(crate) fn plan(&self, len: u64) {
        self.total_files.fetch_add(1, Ordering::Relaxed);
        self.total_bytes.fetch_add(len, Ordering::Relaxed);
    }
    pub(crate) fn advance(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
