//! What a copy reports: per file, per failure, in all.

use std::time::Duration;

use reach_core::Error;

/// How a file's copy was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The destination hashed its copy itself.
    TargetHash,
    /// The source target hashed the file itself, on its own machine and while it was being
    /// sent, and that matched the bytes received here (which were written through this
    /// machine's own file system calls, checked and synced). Used for large files copied from
    /// a remote target to the local one: it spares reading the whole copy back after it was
    /// written.
    SourceHash,
    /// The copy was read back and hashed here.
    ReadBack,
    /// Not checked ([`crate::CopyOptions::verify`] was off).
    Skipped,
}

impl Verified {
    /// A short name (`target-hash`, `source-hash`, `read-back`, `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::TargetHash => "target-hash",
            Verified::SourceHash => "source-hash",
            Verified::ReadBack => "read-back",
            Verified::Skipped => "skipped",
        }
    }
}

/// A file copied.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Where it came from.
    pub source: String,
    /// Where it landed.
    pub dest: String,
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its contents.
    pub sha256: [u8; 32],
    /// Bytes kept from an earlier interrupted copy (0 unless resumed).
    pub resumed_from: u64,
    /// How the copy was checked.
    pub verified: Verified,
}

/// A path that could not be copied; the rest of the copy went on.
#[derive(Debug)]
pub struct Failure {
    /// The source path.
    pub source: String,
    /// Why.
    pub error: Error,
}

/// What a copy did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files copied, in the order they finished.
    pub files: Vec<FileReport>,
    /// Directories created or reused.
    pub dirs: u64,
    /// Symlinks copied as links.
    pub symlinks: u64,
    /// Bytes of the copied files.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Paths that failed.
    pub failures: Vec<Failure>,
}

impl Summary {
    /// The first failure's error, for a caller that wants one.
    pub fn first_error(&self) -> Option<&Error> {
        self.failures.first().map(|f| &f.error)
    }
}

/// Hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
