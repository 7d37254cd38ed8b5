//! Running an adapter only as the bytes that were checked.
//!
//! The adapter's file is opened once. Its bytes are read through that one descriptor, hashed
//! as they are copied into a sealed memory file (`memfd_create`, then `F_SEAL_WRITE`,
//! `F_SEAL_GROW`, `F_SEAL_SHRINK` and `F_SEAL_SEAL`), and the digest compared with the pin.
//! What runs is that memory file, through `/proc/self/fd/N` in the child: replacing the path
//! (a rename), or writing into the file after the check, cannot change the bytes that run.
//! A script works too: its interpreter reads the same sealed copy through the same path.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use command_fds::{CommandFdExt, FdMapping};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use reach_core::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};

/// The descriptor the sealed copy has in the adapter's process.
const CHILD_FD: i32 = 3;

/// The most an adapter may weigh: it is copied into memory.
const MAX_SIZE: u64 = 512 << 20;

/// What an adapter must be before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Its SHA-256 must be this.
    Pinned([u8; 32]),
    /// Any bytes: only when the user allowed unpinned adapters.
    Unpinned,
}

/// An adapter's bytes, checked and sealed, ready to run.
#[derive(Debug)]
pub struct VerifiedProgram {
    path: PathBuf,
    digest: [u8; 32],
    /// A read-only descriptor of the sealed copy.
    sealed: OwnedFd,
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest from 64 hex digits (a pin as written in `reach.toml`).
pub fn parse_digest(text: &str) -> Result<[u8; 32]> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidInput,
            format!("`{text}` is not a SHA-256 digest (64 hex digits)"),
        )
    };
    let text = text.trim();
    let text = text.strip_prefix("sha256:").unwrap_or(text);
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(digest)
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn sys_error(what: &str, path: &Path) -> impl FnOnce(nix::Error) -> Error {
    let context = format!("{what} for adapter `{}`", path.display());
    move |e| Error::io(context, std::io::Error::from(e))
}

impl VerifiedProgram {
    /// Opens `path`, copies and hashes it through one descriptor, and checks the digest
    /// against `trust`. A mismatch is `PermissionDenied`, naming both digests.
    pub fn open(path: &Path, trust: Trust) -> Result<VerifiedProgram> {
        let mut file =
            File::open(path).map_err(io_error(format!("open adapter `{}`", path.display())))?;
        let meta = file
            .metadata()
            .map_err(io_error(format!("stat adapter `{}`", path.display())))?;
        if !meta.is_file() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("adapter `{}` is not a regular file", path.display()),
            ));
        }
        if meta.len() > MAX_SIZE {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "adapter `{}` is {} bytes; an adapter may be at most {MAX_SIZE}",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        let name = CString::new("reach-adapter").map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                "a memory file name with a NUL byte",
            )
        })?;
        let memfd = memfd_create(
            &name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(sys_error("memfd_create", path))?;
        let mut copy = File::from(memfd);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted) => continue,
                Err(e) => return Err(Error::io(format!("read adapter `{}`", path.display()), e)),
            };
            total += n as u64;
            if total > MAX_SIZE {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "adapter `{}` grew past {MAX_SIZE} bytes while it was read",
                        path.display()
                    ),
                ));
            }
            hasher.update(&buf[..n]);
            copy.write_all(&buf[..n])
                .map_err(io_error(format!("copy adapter `{}`", path.display())))?;
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if let Trust::Pinned(expected) = trust {
            if expected != digest {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "adapter `{}` has SHA-256 {} but its pin is {}: it was not run. If \
                         you changed it on purpose, pin it again (`reach plugin pin`)",
                        path.display(),
                        hex(&digest),
                        hex(&expected)
                    ),
                ));
            }
        }
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_SEAL;
        fcntl(copy.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))
            .map_err(sys_error("sealing", path))?;
        // A file open for writing cannot be executed (ETXTBSY): keep a read-only descriptor
        // of the sealed copy and let the writable one go.
        let sealed: OwnedFd = File::open(fd_path(&copy))
            .map_err(io_error(format!(
                "reopen the sealed copy of adapter `{}`",
                path.display()
            )))?
            .into();
        drop(copy);
        Ok(VerifiedProgram {
            path: path.to_owned(),
            digest,
            sealed,
        })
    }

    /// The SHA-256 of the bytes that will run.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Where the bytes were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs the sealed copy (as `/proc/self/fd/3` in the child, which keeps
    /// that descriptor). Its `argv[0]` is the adapter's path, as if run from there.
    pub fn command(&self) -> Result<tokio::process::Command> {
        let duplicate = self.sealed.try_clone().map_err(io_error(format!(
            "duplicate the sealed copy of adapter `{}`",
            self.path.display()
        )))?;
        let mut command = tokio::process::Command::new(format!("/proc/self/fd/{CHILD_FD}"));
        command.arg0(&self.path);
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: duplicate,
                child_fd: CHILD_FD,
            }])
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        Ok(command)
    }
}

fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}
