//! Operations the archive API lacks (rename, chmod, truncate, removal, listings, hashes,
//! mtimes): through the agent when it runs, else a shell command in the container, whose
//! failures are sorted into error kinds by what the tool said.

use bytes::Bytes;
use reach_core::{DirEntry, Error, ErrorKind, ExecSpec, FileType, Metadata, ProcessExt, Result};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::Conn;
use reach_agent_client::{errno_kind, Fields, Op};

/// An agent read or write that failed, named.
pub(crate) fn agent_io_error(conn: &Conn, verb: &str, path: &str, e: std::io::Error) -> Error {
    let kind = e
        .raw_os_error()
        .map_or(ErrorKind::SessionDropped, errno_kind);
    Error::new(
        kind,
        format!("{verb} `{path}` in container `{}`: {e}", conn.name),
    )
}

/// Runs an operation the archive API lacks: through the agent, else a shell command.
pub(crate) async fn op(
    conn: &Arc<Conn>,
    op: Op,
    path: &str,
    args: &[u8],
    shell: Option<String>,
) -> Result<Bytes> {
    let verb = op_verb(op);
    if let Some(agent) = conn.agent().await {
        return agent.op(op, path, args).await?.map_err(|f| {
            Error::new(
                errno_kind(f.errno),
                format!(
                    "{verb} `{path}` in container `{}`: {}",
                    conn.name, f.message
                ),
            )
        });
    }
    let Some(line) = shell else {
        return Err(unsupported(conn, verb, path));
    };
    if !conn.has_shell().await {
        return Err(unsupported(conn, verb, path));
    }
    let process = crate::process::exec(conn.clone(), ExecSpec::shell(line)).await?;
    let out = process.output().await?;
    if out.status.success() {
        return Ok(Bytes::from(out.stdout));
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let lower = said.to_ascii_lowercase();
    let kind = if lower.contains("no such file") {
        ErrorKind::NotFound
    } else if lower.contains("permission denied")
        || lower.contains("read-only")
        || lower.contains("not permitted")
    {
        ErrorKind::PermissionDenied
    } else if lower.contains("file exists") {
        ErrorKind::AlreadyExists
    } else if lower.contains("not empty") || lower.contains("not a directory") {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Io
    };
    Err(Error::new(
        kind,
        format!("{verb} `{path}` in container `{}`: {said}", conn.name),
    ))
}

fn unsupported(conn: &Conn, verb: &str, path: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "cannot {verb} `{path}` in container `{}`: the Docker archive API has no such \
             operation, image `{}` has no shell (/bin/sh) to do it, and the reach agent is \
             not available ({})",
            conn.name,
            conn.image,
            conn.agent_absence()
        ),
    )
}

fn op_verb(op: Op) -> &'static str {
    match op {
        Op::Rename => "rename",
        Op::Chmod => "chmod",
        Op::Truncate => "truncate",
        Op::RemoveFile => "remove",
        Op::RemoveDir => "remove directory",
        Op::RemoveDirAll => "remove tree",
        Op::ReadDir => "list",
        Op::Sha256 => "hash",
        Op::SetMtime => "set the modification time of",
        Op::Read => "read",
        Op::Write => "write",
    }
}

pub(crate) fn parse_listing(payload: Bytes) -> Vec<DirEntry> {
    let mut fields = Fields(payload);
    let mut entries = Vec::new();
    while !fields.is_empty() {
        let entry = (|| {
            let name = fields.string()?;
            let kind = fields.u8()?;
            let mode = fields.u32()?;
            let len = fields.u64()?;
            let secs = fields.i64()?;
            let nanos = fields.u32()?;
            let uid = fields.u32()?;
            let gid = fields.u32()?;
            Some(DirEntry {
                name,
                metadata: Metadata {
                    file_type: match kind {
                        0 => FileType::File,
                        1 => FileType::Dir,
                        2 => FileType::Symlink,
                        _ => FileType::Other,
                    },
                    len,
                    mode,
                    modified: u64::try_from(secs)
                        .ok()
                        .map(|s| UNIX_EPOCH + Duration::new(s, nanos.min(999_999_999))),
                    uid: Some(uid),
                    gid: Some(gid),
                },
            })
        })();
        match entry {
            Some(entry) => entries.push(entry),
            None => break,
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}
