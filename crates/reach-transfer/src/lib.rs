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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

mod file;
mod options;
mod part;
mod report;
mod tree;

pub use options::{CopyOptions, Progress};
pub use part::{part_path, PART_SUFFIX};
pub use report::{hex, Failure, FileReport, Summary, Verified};

pub(crate) use file::hash_target;
pub(crate) use part::{parent_of, TempRegistry};

use futures_util::stream::{self, StreamExt};
use reach_core::path::{file_name, join};
use reach_core::{Backend, Error, ErrorKind, FileSystem, FileType, Metadata, Result};

/// Bytes moved per read and write.
pub(crate) const CHUNK: usize = 256 * 1024;

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
