//! File operations (FS_OP frames): each runs on a thread of its own and answers with FS_OK
//! or FS_ERR.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use reach_agent::protocol::*;

use crate::frames::{error_payload, put_bytes, send, Fields, Out};
use crate::hash::sha256_file;

/// Runs one file operation and sends its answer.
pub(crate) fn fs_op(out: &Out, id: u32, payload: &[u8]) {
    let mut fields = Fields(payload);
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "malformed file request");
    let result = (|| -> io::Result<Vec<u8>> {
        let op = fields.u8().ok_or_else(bad)?;
        let path = fields.string().ok_or_else(bad)?;
        match op {
            OP_RENAME => {
                let to = fields.string().ok_or_else(bad)?;
                std::fs::rename(&path, &to).map(|()| Vec::new())
            }
            OP_CHMOD => {
                let mode = fields.u32().ok_or_else(bad)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map(|()| Vec::new())
            }
            OP_TRUNCATE => {
                let len = fields.u64().ok_or_else(bad)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(len)
                    .map(|()| Vec::new())
            }
            OP_REMOVE_FILE => std::fs::remove_file(&path).map(|()| Vec::new()),
            OP_REMOVE_DIR => std::fs::remove_dir(&path).map(|()| Vec::new()),
            OP_REMOVE_DIR_ALL => std::fs::remove_dir_all(&path).map(|()| Vec::new()),
            OP_READ_DIR => read_dir(&path),
            OP_SHA256 => sha256_file(&path).map(|digest| digest.to_vec()),
            OP_READ => {
                use std::os::unix::fs::FileExt;
                let offset = fields.u64().ok_or_else(bad)?;
                let len = fields.u32().ok_or_else(bad)? as usize;
                let file = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
                Ok(buf)
            }
            OP_WRITE => {
                use std::os::unix::fs::{FileExt, OpenOptionsExt};
                let flags = fields.u8().ok_or_else(bad)?;
                let mode = fields.u32().ok_or_else(bad)?;
                let offset = fields.u64().ok_or_else(bad)?;
                let data = fields.0;
                let has = |flag: u8| flags & flag != 0;
                let mut open = std::fs::OpenOptions::new();
                open.write(true).mode(mode);
                if has(WRITE_EXCLUSIVE) {
                    open.create_new(true);
                } else if has(WRITE_CREATE) {
                    open.create(true);
                }
                if has(WRITE_TRUNCATE) {
                    open.truncate(true);
                }
                if has(WRITE_APPEND) {
                    open.append(true);
                }
                let mut file = open.open(&path)?;
                if has(WRITE_APPEND) {
                    file.write_all(data)?;
                } else if !data.is_empty() {
                    file.write_all_at(data, offset)?;
                }
                if has(WRITE_SYNC) {
                    file.sync_all()?;
                }
                Ok(Vec::new())
            }
            OP_SET_MTIME => {
                let secs = fields.u64().ok_or_else(bad)?;
                let nanos = fields.u32().ok_or_else(bad)?;
                let when = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
                std::fs::File::open(&path)?
                    .set_modified(when)
                    .map(|()| Vec::new())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "unknown file operation",
            )),
        }
    })();
    match result {
        Ok(answer) => send(out, FS_OK, id, &answer),
        Err(err) => send(out, FS_ERR, id, &error_payload(&err, 0)),
    }
}

/// Entries with their `lstat`: name, kind (0 file, 1 dir, 2 symlink, 3 other), mode, size,
/// mtime seconds, mtime nanoseconds, uid, gid.
fn read_dir(path: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue; // removed while listing
        };
        put_bytes(&mut buf, entry.file_name().as_encoded_bytes());
        let ft = meta.file_type();
        buf.push(if ft.is_symlink() {
            2
        } else if ft.is_dir() {
            1
        } else if ft.is_file() {
            0
        } else {
            3
        });
        buf.extend_from_slice(&(meta.mode() & 0o7777).to_be_bytes());
        buf.extend_from_slice(&meta.len().to_be_bytes());
        buf.extend_from_slice(&meta.mtime().to_be_bytes());
        buf.extend_from_slice(&(meta.mtime_nsec() as u32).to_be_bytes());
        buf.extend_from_slice(&meta.uid().to_be_bytes());
        buf.extend_from_slice(&meta.gid().to_be_bytes());
    }
    Ok(buf)
}
