//! The transfer engine of reach: copies files and trees between any two targets.
//!
//! A copy streams through this process from the source's [`FileSystem`] to the
//! destination's, never staging a whole file in memory or on local disk:
//!
//! - **Integrity**: the SHA-256 of the bytes read is computed while they stream; once written,
//!   the destination's copy is hashed (on the target where the backend can, else by reading
//!   it back) and a mismatch is an error that leaves the destination untouched. A large file
//!   from a remote target into this machine is instead checked against the source's own
//!   hash, computed on the source while the bytes stream (see [`Verified::SourceHash`]).
//! - **Atomicity**: each file is written to a temporary sibling `.NAME.reach-part`, flushed
//!   to stable storage where the backend allows, verified, and renamed over the destination.
//!   On any failure the temporary is removed (kept with [`CopyOptions::resume`]); an old
//!   destination is never half-overwritten.
//! - **Resume**: with [`CopyOptions::resume`], a temporary left by an interrupted copy is
//!   hashed, compared with the same prefix of the source, and continued from its end when
//!   they match (and started over when they do not).
//! - **Trees** ([`CopyOptions::recursive`]): directories, files and symlinks (copied as
//!   links); special files are refused by name. Files are copied concurrently, at most
//!   [`CopyOptions::concurrency`] at once. [`CopyOptions::preserve`] keeps permission bits
//!   and modification times.
//!
//! Destinations follow `scp`: copying into an existing directory puts each source inside it
//! under its own name; several sources need an existing directory; a missing parent
//! directory is an error, not created.
//!
//! ```no_run
//! # async fn demo(src: std::sync::Arc<dyn reach_core::Backend>,
//! #               dst: std::sync::Arc<dyn reach_core::Backend>) -> reach_core::Result<()> {
//! use reach_transfer::{CopyOptions, Endpoint, Transfer};
//! let transfer = Transfer::new(CopyOptions::default());
//! let summary = transfer
//!     .copy(&[Endpoint::new(src, "data.bin")], &Endpoint::new(dst, "/srv/data.bin"))
//!     .await?;
//! assert!(summary.failures.is_empty());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod tree;

use futures_util::stream::{self, StreamExt};
use reach_core::path::{file_name, join};
use reach_core::{
    Backend, BoxRead, Capability, Error, ErrorKind, FileSystem, FileType, Metadata, Result,
    WriteOptions,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes moved per read and write.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the writer.
const READ_AHEAD: usize = 8;
/// Files at least this large are verified with the target's own hash when it has one; a
/// smaller file is cheaper to read back than to start a hashing command for.
const REMOTE_HASH_MIN: u64 = 8 * 1024 * 1024;
/// How much of the end of an interrupted part `resume` distrusts and writes again: more than
/// any backend keeps in flight (SFTP 16 × 256 KiB, the Docker agent 6 × 512 KiB).
const RESUME_DISTRUST: u64 = 8 * 1024 * 1024;
/// The temporary's suffix.
pub const PART_SUFFIX: &str = ".reach-part";

/// One side of a copy: a target and a path in its syntax.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The target.
    pub backend: Arc<dyn Backend>,
    /// The path on it (absolute, or relative to the login directory).
    pub path: String,
}

impl Endpoint {
    /// `path` on `backend`.
    pub fn new(backend: Arc<dyn Backend>, path: impl Into<String>) -> Self {
        Endpoint {
            backend,
            path: path.into(),
        }
    }

    fn describe(&self, path: &str) -> String {
        describe(&*self.backend, path)
    }
}

pub(crate) fn describe(backend: &dyn Backend, path: &str) -> String {
    if backend.destination().is_local() {
        path.to_owned()
    } else {
        format!("{}:{path}", backend.destination())
    }
}

/// The error for a destination whose bytes, read back or hashed where they landed, are not
/// the ones sent (`written` is `None` when nothing was found there).
pub(crate) fn not_as_sent(
    backend: &dyn Backend,
    path: &str,
    sent: &[u8],
    written: Option<&[u8]>,
) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "`{}` does not match what was sent (sha256 {} sent, {} written); the destination \
             was left as it was",
            describe(backend, path),
            hex(sent),
            written.map_or_else(|| "nothing".to_owned(), hex)
        ),
    )
}

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
    total_bytes: AtomicU64,
    total_files: AtomicU64,
    done_bytes: AtomicU64,
    done_files: AtomicU64,
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
    fn plan(&self, len: u64) {
        self.total_files.fetch_add(1, Ordering::Relaxed);
        self.total_bytes.fetch_add(len, Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

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
    /// Not checked ([`CopyOptions::verify`] was off).
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

/// The directory holding `path` (`""` for a bare name, relative to the login directory).
fn parent_of(path: &str) -> &str {
    reach_core::path::parent(path).unwrap_or("")
}

/// The temporary sibling a file is written to: `.NAME.reach-part`.
pub fn part_path(path: &str) -> String {
    let name = file_name(path);
    join(parent_of(path), &format!(".{name}{PART_SUFFIX}"))
}

/// A filled temporary: the digest of the whole source, its length, and the bytes kept from
/// an interrupted copy.
struct Filled {
    digest: [u8; 32],
    bytes: u64,
    kept: u64,
    /// The destination's hash of the file, computed while it was written, where it can.
    landed: Option<reach_core::TargetDigest>,
}

/// What a filled temporary is checked against: the digest of the bytes sent, and the
/// source's own hash of the file when it computed one.
struct Check<'s, 'a> {
    src: &'s Side<'a>,
    from: &'s str,
    digest: [u8; 32],
    theirs: Option<[u8; 32]>,
    landed: Option<reach_core::TargetDigest>,
}

/// One thing to copy.
#[derive(Debug)]
pub(crate) enum Item {
    File {
        src: String,
        dst: String,
        meta: Metadata,
    },
    Link {
        src: String,
        dst: String,
    },
}

/// A directory to create, and to stamp afterwards with `-p`.
#[derive(Debug)]
pub(crate) struct DirItem {
    dst: String,
    meta: Metadata,
}

/// One file copy's shared context.
pub(crate) struct Side<'a> {
    pub(crate) fs: &'a Arc<dyn FileSystem>,
    pub(crate) backend: &'a dyn Backend,
}

/// Runs copies; holds the progress counters and the temporaries in flight, so that a
/// caller that cancels a copy (Ctrl-C) can remove what it left with [`Transfer::abandon`].
#[derive(Debug)]
pub struct Transfer {
    options: CopyOptions,
    progress: Arc<Progress>,
    temps: Arc<TempRegistry>,
}

/// A temporary being written: where, and its path.
type Temp = (Arc<dyn FileSystem>, String);

#[derive(Debug, Default)]
struct TempRegistry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Temp>>,
}

impl TempRegistry {
    fn add(&self, fs: &Arc<dyn FileSystem>, path: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, (fs.clone(), path.to_owned()));
        }
        id
    }
    fn done(&self, id: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
    }
    fn drain(&self) -> Vec<Temp> {
        match self.live.lock() {
            Ok(mut live) => live.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Transfer {
    /// A transfer engine with these options.
    pub fn new(options: CopyOptions) -> Self {
        Transfer {
            options,
            progress: Arc::new(Progress::default()),
            temps: Arc::new(TempRegistry::default()),
        }
    }

    /// The live counters, for a progress display.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// After a copy future was dropped before it finished: removes the temporaries it was
    /// writing (kept with [`CopyOptions::resume`], for the next run to continue). Returns
    /// how many were removed.
    pub async fn abandon(&self) -> usize {
        let temps = self.temps.drain();
        if self.options.resume {
            return 0;
        }
        let mut removed = 0;
        for (fs, path) in temps {
            if fs.remove_file(&path).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Copies `sources` to `dest` (see the crate docs for the rules). Problems with one
    /// path are collected in [`Summary::failures`] while the rest is copied; problems with
    /// the destination itself, or a single source that cannot be copied, are errors.
    pub async fn copy(&self, sources: &[Endpoint], dest: &Endpoint) -> Result<Summary> {
        let started = Instant::now();
        if sources.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "nothing to copy"));
        }
        let dst_fs = dest.backend.fs().await?;
        let dest_dir = match dst_fs.metadata(&dest.path).await {
            Ok(meta) => meta.is_dir(),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => false,
            Err(e) => return Err(e),
        };
        let trailing_slash = dest.path.ends_with('/') && dest.path.len() > 1;
        if (sources.len() > 1 || trailing_slash) && !dest_dir {
            return Err(self.missing_dir(dest, &dst_fs, &dest.path).await);
        }
        if !dest_dir {
            self.check_parent(dest, &dst_fs, &dest.path).await?;
        }
        let mut summary = Summary::default();
        let mut dirs = Vec::new();
        let mut items = Vec::new();
        for source in sources {
            let src_fs = source.backend.fs().await?;
            let target = if dest_dir {
                join(&dest.path, file_name(&source.path))
            } else {
                dest.path.clone()
            };
            let single = sources.len() == 1;
            let tree = match self
                .plan(source, &src_fs, &target, &mut dirs, &mut items)
                .await
            {
                Ok(tree) => tree,
                Err(error) if single => return Err(error),
                Err(error) => {
                    summary.failures.push(Failure {
                        source: source.describe(&source.path),
                        error,
                    });
                    continue;
                }
            };
            if tree {
                let src_side = Side {
                    fs: &src_fs,
                    backend: &*source.backend,
                };
                let dst_side = Side {
                    fs: &dst_fs,
                    backend: &*dest.backend,
                };
                let bulk = self
                    .bulk_tree(
                        &src_side,
                        &dst_side,
                        &source.path,
                        &target,
                        &dirs,
                        &items,
                        &mut summary,
                    )
                    .await;
                let done = match bulk {
                    Ok(done) => done,
                    Err(error) => {
                        summary.failures.push(Failure {
                            source: source.describe(&source.path),
                            error,
                        });
                        true
                    }
                };
                if done {
                    dirs.clear();
                    items.clear();
                    continue;
                }
            }
            let failed = summary.failures.len();
            self.run(
                source,
                &src_fs,
                dest,
                &dst_fs,
                &mut dirs,
                &mut items,
                &mut summary,
            )
            .await;
            // One file asked for and not copied: that is the copy's error.
            if single && !tree && summary.failures.len() > failed {
                if let Some(failure) = summary.failures.pop() {
                    return Err(failure.error);
                }
            }
        }
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    async fn missing_dir(&self, dest: &Endpoint, fs: &Arc<dyn FileSystem>, dir: &str) -> Error {
        let shown = dest.describe(dir);
        match fs.metadata(dir).await {
            Ok(_) => Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "`{shown}` is not a directory; several sources need a directory to go into"
                ),
            ),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound) => Error::new(
                ErrorKind::NotFound,
                format!(
                    "destination directory `{shown}` does not exist; create it first \
                     (`reach mkdir -p {shown}`)"
                ),
            ),
            Err(e) => e,
        }
    }

    /// The directory that will hold `path` must exist (we do not guess at creating it).
    async fn check_parent(
        &self,
        dest: &Endpoint,
        fs: &Arc<dyn FileSystem>,
        path: &str,
    ) -> Result<()> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Ok(());
        }
        match fs.metadata(parent).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(self.missing_dir(dest, fs, parent).await),
        }
    }

    /// Lists what copying `source` to `target` involves; whether it is a tree.
    async fn plan(
        &self,
        source: &Endpoint,
        src_fs: &Arc<dyn FileSystem>,
        target: &str,
        dirs: &mut Vec<DirItem>,
        items: &mut Vec<Item>,
    ) -> Result<bool> {
        let meta = src_fs.metadata(&source.path).await?;
        match meta.file_type {
            FileType::File => {
                self.progress.plan(meta.len);
                items.push(Item::File {
                    src: source.path.clone(),
                    dst: target.to_owned(),
                    meta,
                });
                Ok(false)
            }
            FileType::Dir if !self.options.recursive => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "`{}` is a directory; copy trees with -r",
                    source.describe(&source.path)
                ),
            )),
            FileType::Dir => {
                let mut pending = vec![(source.path.clone(), target.to_owned(), meta)];
                while let Some((src, dst, meta)) = pending.pop() {
                    let entries = src_fs.read_dir(&src).await?;
                    dirs.push(DirItem {
                        dst: dst.clone(),
                        meta,
                    });
                    for entry in entries {
                        let (s, d) = (join(&src, &entry.name), join(&dst, &entry.name));
                        match entry.metadata.file_type {
                            FileType::Dir => pending.push((s, d, entry.metadata)),
                            FileType::File => {
                                self.progress.plan(entry.metadata.len);
                                items.push(Item::File {
                                    src: s,
                                    dst: d,
                                    meta: entry.metadata,
                                });
                            }
                            FileType::Symlink => items.push(Item::Link { src: s, dst: d }),
                            FileType::Other => items.push(Item::File {
                                src: s,
                                dst: d,
                                meta: entry.metadata,
                            }),
                        }
                    }
                }
                Ok(true)
            }
            FileType::Symlink | FileType::Other => Err(special(&source.describe(&source.path))),
        }
    }

    /// Creates the directories, then copies the files and links concurrently, then stamps
    /// the directories (deepest first) with `-p`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        source: &Endpoint,
        src_fs: &Arc<dyn FileSystem>,
        dest: &Endpoint,
        dst_fs: &Arc<dyn FileSystem>,
        dirs: &mut Vec<DirItem>,
        items: &mut Vec<Item>,
        summary: &mut Summary,
    ) {
        let src = Side {
            fs: src_fs,
            backend: &*source.backend,
        };
        let dst = Side {
            fs: dst_fs,
            backend: &*dest.backend,
        };
        let mut made = Vec::new();
        for dir in dirs.drain(..) {
            match make_dir(dst_fs, &dir.dst).await {
                Ok(()) => {
                    summary.dirs += 1;
                    made.push(dir);
                }
                Err(error) => summary.failures.push(Failure {
                    source: dest.describe(&dir.dst),
                    error,
                }),
            }
        }
        let items = std::mem::take(items);
        let mut results = stream::iter(items)
            .map(|item| self.copy_item(&src, &dst, item))
            .buffer_unordered(self.options.concurrency.max(1));
        while let Some(result) = results.next().await {
            match result {
                Ok(Some(report)) => {
                    summary.bytes += report.bytes;
                    summary.files.push(report);
                }
                Ok(None) => summary.symlinks += 1,
                Err(failure) => summary.failures.push(failure),
            }
        }
        drop(results);
        if self.options.preserve {
            for dir in made.iter().rev() {
                if let Err(error) = stamp(dst_fs, &dir.dst, &dir.meta).await {
                    summary.failures.push(Failure {
                        source: dest.describe(&dir.dst),
                        error,
                    });
                }
            }
        }
    }

    async fn copy_item(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        item: Item,
    ) -> std::result::Result<Option<FileReport>, Failure> {
        let (from, outcome) = match item {
            Item::File {
                src: s,
                dst: d,
                meta,
            } => {
                let outcome = if meta.file_type == FileType::File {
                    self.copy_file(src, dst, &s, &d, &meta).await.map(Some)
                } else {
                    Err(special(&describe(src.backend, &s)))
                };
                self.progress.done_files.fetch_add(1, Ordering::Relaxed);
                (s, outcome)
            }
            Item::Link { src: s, dst: d } => {
                let outcome = self.copy_link(src, dst, &s, &d).await.map(|()| None);
                (s, outcome)
            }
        };
        outcome.map_err(|error| Failure {
            source: describe(src.backend, &from),
            error,
        })
    }

    /// Copies a symlink as a link: made beside the destination, then renamed over it.
    async fn copy_link(&self, src: &Side<'_>, dst: &Side<'_>, from: &str, to: &str) -> Result<()> {
        let target = src.fs.read_link(from).await?;
        let part = part_path(to);
        let _ = dst.fs.remove_file(&part).await;
        dst.fs.symlink(&target, &part).await?;
        if let Err(e) = dst.fs.rename(&part, to).await {
            let _ = dst.fs.remove_file(&part).await;
            return Err(e);
        }
        Ok(())
    }

    /// Copies one regular file through its temporary.
    async fn copy_file(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        from: &str,
        to: &str,
        meta: &Metadata,
    ) -> Result<FileReport> {
        let part = part_path(to);
        let id = self.temps.add(dst.fs, &part);
        // Into this machine from a remote one: the source hashes the file on its own machine
        // while it streams, instead of this machine reading the whole copy back afterwards.
        let source_hash = self.options.verify
            && meta.len >= REMOTE_HASH_MIN
            && src.fs.capabilities().has(Capability::Sha256)
            && !src.fs.capabilities().has(Capability::HostFiles)
            && dst.fs.capabilities().has(Capability::HostFiles);
        let filled = self.fill_part(src, dst, from, &part, meta);
        let (outcome, theirs) = if source_hash {
            // A failed fill drops the hash at once; a hash that fails is no failure of the
            // copy, which is then checked the usual way.
            let hash = async { Ok(src.fs.sha256(from).await.ok()) };
            match tokio::try_join!(filled, hash) {
                Ok((filled, theirs)) => (Ok(filled), theirs),
                Err(e) => (Err(e), None),
            }
        } else {
            (filled.await, None)
        };
        let outcome = match outcome {
            Ok(Filled {
                digest,
                bytes,
                kept: resumed_from,
                landed,
            }) => {
                let check = Check {
                    src,
                    from,
                    digest,
                    theirs,
                    landed,
                };
                self.finish(dst, &part, to, meta, check)
                    .await
                    .map(|verified| FileReport {
                        source: describe(src.backend, from),
                        dest: describe(dst.backend, to),
                        bytes,
                        sha256: digest,
                        resumed_from,
                        verified,
                    })
            }
            Err(e) => Err(e),
        };
        if outcome.is_err() && !self.options.resume {
            let _ = dst.fs.remove_file(&part).await;
        }
        self.temps.done(id);
        outcome
    }

    /// Writes the source into the temporary (continuing a verified prefix with `resume`);
    /// returns the digest of the whole source, its length and the bytes kept.
    async fn fill_part(
        &self,
        src: &Side<'_>,
        dst: &Side<'_>,
        from: &str,
        part: &str,
        meta: &Metadata,
    ) -> Result<Filled> {
        let mut reader = src.fs.open_read(from).await?;
        let mut hasher = Sha256::new();
        let mut kept = 0;
        if self.options.resume {
            if let Some(len) = self.resumable(dst, part, meta.len).await {
                // Pipelined writes land out of order: a writer killed mid-copy can leave
                // holes in the last few chunks. Keep the part only up to well before its end.
                let len = len.saturating_sub(RESUME_DISTRUST);
                if len > 0 {
                    dst.fs.truncate(part, len).await?;
                }
                // Exactly `len` bytes, read back: a writer killed a moment ago may leave a
                // server still appending what it had received, so the whole file is no
                // stable measure.
                let mut prefix = dst.fs.open_read(part).await?;
                let mut sum = Sha256::new();
                hash_prefix(&mut prefix, &mut sum, len).await.map_err(|e| {
                    Error::io(format_args!("read `{}`", describe(dst.backend, part)), e)
                })?;
                drop(prefix);
                let wanted: [u8; 32] = sum.finalize().into();
                let read = hash_prefix(&mut reader, &mut hasher, len)
                    .await
                    .map_err(|e| {
                        Error::io(format_args!("read `{}`", describe(src.backend, from)), e)
                    })?;
                if len > 0 && read == len && hasher.clone().finalize().as_slice() == wanted {
                    kept = len;
                    self.progress.advance(len);
                } else {
                    reader = src.fs.open_read(from).await?;
                    hasher = Sha256::new();
                }
            }
        }
        let options = WriteOptions {
            append: kept > 0,
            mode: (meta.mode & 0o777) | 0o600,
            len: Some(meta.len - kept),
            sync: self.options.sync,
            ..WriteOptions::default()
        };
        let shown_from = describe(src.backend, from);
        let shown_to = describe(dst.backend, part);
        // A large file is hashed by the destination as it lands, where it can, rather than
        // read back in full once it is there.
        let (writer, landed) = if self.options.verify
            && meta.len >= REMOTE_HASH_MIN
            && dst.fs.capabilities().has(Capability::HashedWrite)
        {
            match dst.fs.open_write_hashed(part, options).await {
                Ok((writer, landed)) => (writer, Some(landed)),
                Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {
                    (dst.fs.open_write(part, options).await?, None)
                }
                Err(e) => return Err(e),
            }
        } else {
            (dst.fs.open_write(part, options).await?, None)
        };
        let sent = pump(
            reader,
            writer,
            &mut hasher,
            meta.len - kept >= REMOTE_HASH_MIN,
            &self.progress,
            &shown_from,
            &shown_to,
        )
        .await?;
        Ok(Filled {
            digest: hasher.finalize().into(),
            bytes: kept + sent,
            kept,
            landed,
        })
    }

    /// The length of a temporary worth continuing: a file no longer than the source.
    async fn resumable(&self, dst: &Side<'_>, part: &str, len: u64) -> Option<u64> {
        let meta = dst.fs.symlink_metadata(part).await.ok()?;
        (meta.is_file() && meta.len > 0 && meta.len <= len).then_some(meta.len)
    }

    /// Verifies, stamps and renames a filled temporary into place.
    async fn finish(
        &self,
        dst: &Side<'_>,
        part: &str,
        to: &str,
        meta: &Metadata,
        check: Check<'_, '_>,
    ) -> Result<Verified> {
        let digest = check.digest;
        let verified = match check.theirs {
            _ if !self.options.verify => Verified::Skipped,
            Some(theirs) if theirs == digest => Verified::SourceHash,
            Some(theirs) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "the bytes received for `{}` do not match `{}` (sha256 {} on the \
                         source, {} received): it changed while it was copied, or the \
                         bytes were damaged on the way; the destination was left as it was",
                        describe(dst.backend, to),
                        describe(check.src.backend, check.from),
                        hex(&theirs),
                        hex(&digest)
                    ),
                ))
            }
            None => {
                // Hashed as it landed; a hasher that failed is no verdict, so read it instead.
                let landed = match check.landed {
                    Some(landed) => landed.await.ok(),
                    None => None,
                };
                let (got, how) = match landed {
                    Some(got) => (got, Verified::TargetHash),
                    None => hash_target(dst.fs, part, meta.len).await?,
                };
                if got != digest {
                    return Err(not_as_sent(dst.backend, to, &digest, Some(&got)));
                }
                how
            }
        };
        if self.options.preserve {
            stamp(dst.fs, part, meta).await?;
        } else if meta.mode & 0o600 != 0o600 {
            dst.fs.set_permissions(part, meta.mode & 0o777).await?;
        }
        dst.fs.rename(part, to).await?;
        Ok(verified)
    }
}

pub(crate) fn special(shown: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "`{shown}` is not a regular file, directory or symlink; special files are not copied"
        ),
    )
}

/// Creates a directory, or accepts one that is there.
async fn make_dir(fs: &Arc<dyn FileSystem>, path: &str) -> Result<()> {
    match fs.create_dir(path).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::AlreadyExists) => match fs.metadata(path).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Sets permission bits and modification time.
pub(crate) async fn stamp(fs: &Arc<dyn FileSystem>, path: &str, meta: &Metadata) -> Result<()> {
    fs.set_permissions(path, meta.mode & 0o7777).await?;
    if let Some(modified) = meta.modified {
        fs.set_modified(path, modified).await?;
    }
    Ok(())
}

/// The SHA-256 of a file on a target: its own hash for big files where it has one, else
/// read back.
pub(crate) async fn hash_target(
    fs: &Arc<dyn FileSystem>,
    path: &str,
    len: u64,
) -> Result<([u8; 32], Verified)> {
    if len >= REMOTE_HASH_MIN && fs.capabilities().has(Capability::Sha256) {
        match fs.sha256(path).await {
            Ok(digest) => return Ok((digest, Verified::TargetHash)),
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported) => {}
            Err(e) => return Err(e),
        }
    }
    let mut reader = fs.open_read(path).await?;
    let mut hasher = Sha256::new();
    hash_prefix(&mut reader, &mut hasher, u64::MAX)
        .await
        .map_err(|e| Error::io(format_args!("read back `{path}`"), e))?;
    Ok((hasher.finalize().into(), Verified::ReadBack))
}

/// Hashes up to `len` bytes of `reader`; returns how many there were.
async fn hash_prefix(reader: &mut BoxRead, hasher: &mut Sha256, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
        let n = reader.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// Streams `reader` into `writer`, hashing what is read; the reads run ahead of the writes
/// so that both sides stay busy. Returns the bytes written; the writer is shut down (the
/// data complete on the target) on success.
async fn pump(
    mut reader: BoxRead,
    mut writer: reach_core::BoxWrite,
    hasher: &mut Sha256,
    large: bool,
    progress: &Progress,
    from: &str,
    to: &str,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<u8>>>(READ_AHEAD);
    // A large file is hashed on a thread of its own, beside the reads and writes, so that
    // the hash does not hold up the writer's task.
    // The thread ends when the read future, which owns `to_hash`, is done.
    let (to_hash, hashed) = large
        .then(|| {
            let (to_hash, mut chunks) = tokio::sync::mpsc::channel::<Arc<Vec<u8>>>(READ_AHEAD);
            let mut own = hasher.clone();
            let hashed = tokio::task::spawn_blocking(move || {
                while let Some(chunk) = chunks.blocking_recv() {
                    own.update(chunk.as_slice());
                }
                own
            });
            (to_hash, hashed)
        })
        .unzip();
    let inline = &mut *hasher;
    let read = async move {
        loop {
            // Read into spare capacity: no zeroing of each fresh chunk.
            let mut buf = Vec::with_capacity(CHUNK);
            // Fill whole chunks: fewer, larger writes on the other side.
            while buf.len() < CHUNK {
                if reader.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            let filled = buf.len();
            if filled == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let buf = Arc::new(buf);
            match &to_hash {
                Some(to_hash) => {
                    if to_hash.send(buf.clone()).await.is_err() {
                        return Err(std::io::Error::other("the hashing thread stopped"));
                    }
                }
                None => inline.update(buf.as_slice()),
            }
            if tx.send(buf).await.is_err() {
                return Ok(());
            }
            if filled < CHUNK {
                return Ok(());
            }
        }
    };
    // Owns the receiver: when a write fails, the reader's next send fails and it stops.
    let write = async move {
        let mut sent = 0u64;
        while let Some(buf) = rx.recv().await {
            writer.write_all(&buf).await?;
            sent += buf.len() as u64;
            progress.advance(buf.len() as u64);
        }
        writer.shutdown().await?;
        Ok::<u64, std::io::Error>(sent)
    };
    let (read, write) = tokio::join!(read, write);
    read.map_err(|e| Error::io(format_args!("read `{from}`"), e))?;
    let sent = write.map_err(|e| Error::io(format_args!("write `{to}`"), e))?;
    if let Some(hashed) = hashed {
        *hasher = hashed
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("the hashing thread failed: {e}")))?;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(part_path("/a/b.txt"), "/a/.b.txt.reach-part");
        assert_eq!(part_path("b.txt"), ".b.txt.reach-part");
        assert_eq!(part_path("/b"), "/.b.reach-part");
        assert_eq!(file_name("/a/dir/"), "dir");
        assert_eq!(join("/a/", "b"), "/a/b");
        assert_eq!(join("", "b"), "b");
        assert_eq!(parent_of("x"), "");
        assert_eq!(parent_of("/x"), "/");
        assert_eq!(parent_of("a/b/c"), "a/b");
    }
}
