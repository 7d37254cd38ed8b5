//! Whole-tree fast paths over an exec channel on the same connection: GNU `tar` to pack and
//! unpack, `find` + `sha256sum` to hash, `sync -f` to flush. One stream instead of several
//! SFTP round trips per file (OpenSSH's `sftp-server` is single-threaded, so per-file round
//! trips bound a tree of small files).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use reach_core::{
    shell_quote, BoxRead, Error, ErrorKind, ExecSpec, Process, ProcessExt, Result, StdinMode,
    TreeOptions,
};
use tokio::io::AsyncWriteExt;

/// What the fast paths need to run commands on the server beside the SFTP session.
#[derive(Clone)]
pub(crate) struct RemoteExec {
    pub(crate) handle: Arc<russh::client::Handle<crate::HostKeyCheck>>,
    pub(crate) sessions: Arc<tokio::sync::Semaphore>,
    /// Set once the server, with the connection alive, would not start a command beside the
    /// SFTP session (a `MaxSessions 1` server): later commands are not tried again.
    pub(crate) refused: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts `line` through the user's shell on the connection, once a session is free.
async fn start(
    exec: &RemoteExec,
    addr: &str,
    line: String,
    stdin: bool,
) -> Result<Box<dyn Process>> {
    let permit = exec.sessions.clone().acquire_owned().await.map_err(|_| {
        Error::new(
            ErrorKind::SessionDropped,
            format!("the connection to `{addr}` was closed"),
        )
    })?;
    start_with(exec, addr, line, stdin, permit).await
}

/// [`start`] with a session already held.
async fn start_with(
    exec: &RemoteExec,
    addr: &str,
    line: String,
    stdin: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Box<dyn Process>> {
    let refused = || {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "`{addr}` does not start a command beside the SFTP session on one connection \
                 (is its MaxSessions 1?)"
            ),
        )
    };
    if exec.refused.load(Ordering::Relaxed) {
        return Err(refused());
    }
    let mut spec = ExecSpec::shell(line);
    if stdin {
        spec = spec.stdin(StdinMode::Piped);
    }
    let start = crate::process::SshProcess::start(
        exec.handle.clone(),
        spec,
        addr.to_owned(),
        permit,
        false,
    );
    match start.await {
        Ok(process) => Ok(Box::new(process)),
        // The connection is alive, so the server refused the session: what needed it has
        // another way (hash after the copy, read back, file by file).
        Err(_) if !exec.handle.is_closed() => {
            exec.refused.store(true, Ordering::Relaxed);
            Err(refused())
        }
        Err(e) => Err(e),
    }
}

/// Copies `data` into a command's stdin in large writes (each becomes channel data; the
/// 8 KiB of `tokio::io::copy` made the channel several times slower), then closes it.
async fn feed(data: &mut BoxRead, stdin: &mut reach_core::BoxWrite) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = data.read(&mut buf).await?;
        if n == 0 {
            return stdin.shutdown().await;
        }
        stdin.write_all(&buf[..n]).await?;
    }
}

/// Exit status of the follower when the server has neither a Python 3 that can hash nor
/// OpenSSL and GNU dd.
const FOLLOW_UNSUPPORTED: i32 = 97;
/// Exit status of the Python follower when that Python cannot hash (no `hashlib` SHA-256):
/// the script goes on to GNU dd and OpenSSL, with the offsets on stdin still unread.
const PYTHON_CANNOT_HASH: i32 = 98;

/// The Python follower: maps each new range of the file (argv[1]) and hands it straight to
/// SHA-256, with no pipe between the reader and the hash (a `dd | openssl` pipe costs about
/// as much CPU again as the hash) and no copy out of the page cache (reading 1 GiB into a
/// buffer cost 0.2 s of kernel time here, mapping it 0.05 s), and with argv[2] = 1 flushes
/// each range to disk. A file that ends before an offset it was given is an error (on
/// stderr: the digest is not trusted); one cut short while it is being hashed kills the
/// follower (SIGBUS), which is an error too. No single quotes: it travels inside them. Run
/// with `-I`, so that nothing in the user's directory or environment (a `hashlib.py` in the
/// home directory, `PYTHONPATH`) stands in for the standard library.
const FOLLOW_PYTHON: &str = r#"import os, sys
try:
    import hashlib, mmap
    h = hashlib.sha256()
except Exception:
    sys.exit(98)
path, sync = sys.argv[1], sys.argv[2] == "1"
fd = os.open(path, os.O_RDONLY)
pos = 0
for line in sys.stdin:
    end = int(line)
    if end <= pos:
        continue
    size = os.fstat(fd).st_size
    if size < end:
        sys.exit("%s ends at byte %d, before %d" % (path, size, end))
    base = pos - pos % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, end - base, prot=mmap.PROT_READ, offset=base) as m:
        with memoryview(m) as view:
            h.update(view[pos - base:])
    pos = end
    if sync:
        try:
            os.fdatasync(fd)
        except OSError:
            pass
print(h.hexdigest() + " *stdin")
"#;

/// The script behind [`follow_sha256`]: each line on stdin is an offset up to which the file
/// is complete, and the new range, read back from the file, goes into a SHA-256 (and with
/// `sync` the range is then flushed, so that the final fsync has little left). Python 3's
/// `hashlib` does it where there is one ([`FOLLOW_PYTHON`]); otherwise GNU dd feeds
/// OpenSSL. Anything on stderr means the digest is not to be trusted.
fn follow_script(path: &str, sync: bool) -> String {
    let flush = if sync {
        "sync -d -- \"$f\" 2>/dev/null || :; "
    } else {
        ""
    };
    format!(
        "f={q}; if command -v python3 >/dev/null 2>&1; then \
         python3 -I -c '{FOLLOW_PYTHON}' \"$f\" {sync}; r=$?; [ $r -eq {PYTHON_CANNOT_HASH} ] || exit $r; fi; \
         {{ command -v openssl && dd --version; }} >/dev/null 2>&1 || exit {FOLLOW_UNSUPPORTED}; \
         pos=0; while read -r end; do if [ \"$end\" -gt \"$pos\" ]; then \
         dd if=\"$f\" iflag=skip_bytes,count_bytes skip=\"$pos\" count=$((end - pos)) bs=4M \
         status=none || exit 1; {flush}pos=$end; fi; done | openssl dgst -sha256 -r",
        q = shell_quote(path),
        sync = u8::from(sync),
    )
}

/// Starts hashing `path` on the server as it is written: send offsets up to which the file
/// is complete, then drop the sender; the digest is the SHA-256 of the file up to the last
/// offset sent. [`ErrorKind::Unsupported`] (from the digest) without Python 3 or OpenSSL
/// and GNU dd.
pub(crate) async fn follow_sha256(
    exec: &RemoteExec,
    addr: &str,
    path: &str,
    sync: bool,
) -> Result<(
    tokio::sync::mpsc::UnboundedSender<u64>,
    reach_core::TargetDigest,
)> {
    let process = start(exec, addr, follow_script(path, sync), true).await?;
    let mut stdin = process
        .take_stdin()
        .ok_or_else(|| Error::new(ErrorKind::Protocol, "the hashing process has no stdin"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (addr, what) = (addr.to_owned(), format!("hash `{path}` as it is written"));
    let digest = tokio::spawn(async move {
        let mut fed = Ok(());
        while let Some(end) = rx.recv().await {
            if fed.is_ok() {
                fed = stdin.write_all(format!("{end}\n").as_bytes()).await;
            }
        }
        let _ = stdin.shutdown().await;
        drop(stdin);
        let out = process.output().await?;
        let untrusted =
            |why: String| Error::new(ErrorKind::Unsupported, format!("{what} on `{addr}`: {why}"));
        if out.status == reach_core::ExitStatus::Code(FOLLOW_UNSUPPORTED) {
            return Err(untrusted(
                "no Python 3, nor OpenSSL and GNU dd, there".into(),
            ));
        }
        if !out.status.success() || !out.stderr.is_empty() {
            return Err(failure(&addr, &what, &out.stderr));
        }
        fed.map_err(|e| Error::io(format_args!("{what} on `{addr}`"), e))?;
        parse_sums(&out.stdout)
            .and_then(|sums| sums.into_iter().next())
            .map(|(_, digest)| digest)
            .ok_or_else(|| untrusted("unexpected output from openssl".into()))
    });
    let digest: reach_core::TargetDigest = Box::pin(async move {
        digest
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("the hashing task failed: {e}")))?
    });
    Ok((tx, digest))
}

/// Starts flushing `path` to disk on the server while it is written, so that the writer's
/// final fsync finds little left to do (for 1 GiB on this kind of machine, about 0.5 s that
/// the copy otherwise spends waiting): each offset sent runs `sync -d` on the file
/// (coreutils and busybox), beside the SFTP server's writes. Only a head start: `None`,
/// and nothing started, when no session is free right now or the server refuses one; a
/// server without `sync -d` ignores the offsets; the final fsync is what makes the file
/// durable either way.
pub(crate) async fn follow_flush(
    exec: &RemoteExec,
    addr: &str,
    path: &str,
) -> Option<tokio::sync::mpsc::UnboundedSender<u64>> {
    let permit = exec.sessions.clone().try_acquire_owned().ok()?;
    let line = format!(
        "f={}; while read -r end; do sync -d -- \"$f\" 2>/dev/null || :; done",
        shell_quote(path)
    );
    let process = start_with(exec, addr, line, true, permit).await.ok()?;
    let mut stdin = process.take_stdin()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    tokio::spawn(async move {
        while let Some(end) = rx.recv().await {
            if stdin
                .write_all(format!("{end}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = stdin.shutdown().await;
        drop(stdin);
        // Held until it ends: a process dropped unwaited is killed.
        let _ = process.wait().await;
    });
    Some(tx)
}

/// Whether the server has what the fast paths need (GNU tar, find, sha256sum).
pub(crate) async fn available(exec: &RemoteExec, addr: &str) -> bool {
    let line = "tar --version 2>/dev/null | head -n 1 | grep -q 'GNU tar' \
                && command -v find >/dev/null && command -v sha256sum >/dev/null"
        .to_owned();
    match start(exec, addr, line, false).await {
        Ok(process) => process
            .output()
            .await
            .map(|out| out.status.success())
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// An error from a remote tool's stderr, classified.
fn failure(addr: &str, what: &str, stderr: &[u8]) -> Error {
    let said = String::from_utf8_lossy(stderr).trim().to_owned();
    let lower = said.to_ascii_lowercase();
    let kind = if lower.contains("no such file") {
        ErrorKind::NotFound
    } else if lower.contains("permission denied") || lower.contains("read-only") {
        ErrorKind::PermissionDenied
    } else if lower.contains("file exists") {
        ErrorKind::AlreadyExists
    } else {
        ErrorKind::Io
    };
    Error::new(kind, format!("{what} on `{addr}`: {said}"))
}

/// The script that hashes every regular file under the current directory.
const HASH_ALL: &str = "find . -type f -exec sha256sum -b -- {} +";
/// The script that flushes the file system holding the current directory.
const SYNC_HERE: &str = "{ sync -f . 2>/dev/null || sync; }";

/// Unpacks `archive` into the new directory `dir`, then (in the same command, so in one
/// round trip) syncs and hashes as asked.
pub(crate) async fn write_tree(
    exec: &RemoteExec,
    addr: &str,
    dir: &str,
    mut archive: BoxRead,
    options: TreeOptions,
) -> Result<Option<Vec<(String, [u8; 32])>>> {
    let flags = if options.preserve { "-xpf" } else { "-xmf" };
    let mut line = format!(
        "mkdir -- {0} && cd -- {0} && tar --no-same-owner {flags} -",
        shell_quote(dir)
    );
    if options.sync {
        line = format!("{line} && {SYNC_HERE}");
    }
    if options.hash {
        line = format!("{line} && {HASH_ALL}");
    }
    let what = format!("unpack into `{dir}`");
    let stdout = unpacked(exec, addr, line, &mut archive, &what).await?;
    if !options.hash {
        return Ok(None);
    }
    parse_sums(&stdout).map(Some).ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!("{what} on `{addr}`: unexpected output from sha256sum"),
        )
    })
}

/// Packs the tree under `dir`; the stream fails if `tar` does.
pub(crate) async fn read_tree(exec: &RemoteExec, addr: &str, dir: &str) -> Result<BoxRead> {
    let line = format!(
        "cd -- {} && exec tar --hard-dereference -cf - .",
        shell_quote(dir)
    );
    packed(exec, addr, line, format!("pack `{dir}`")).await
}

/// GNU tar's flags that keep a root file system whole: numeric owners, and every extended
/// attribute (capabilities, SELinux labels) both ways.
const ROOTFS_FLAGS: &str = "--numeric-owner --xattrs --xattrs-include='*'";

/// Packs the root file system under `dir` with the server's GNU tar (hard links as links,
/// devices, owners, attributes).
pub(crate) async fn export_rootfs(exec: &RemoteExec, addr: &str, dir: &str) -> Result<BoxRead> {
    let line = format!(
        "cd -- {} && exec tar {ROOTFS_FLAGS} -cf - .",
        shell_quote(dir)
    );
    packed(exec, addr, line, format!("export `{dir}`")).await
}

/// Unpacks a root file system into `dir` (made if missing) with the server's GNU tar, which
/// keeps owners when it runs as root.
pub(crate) async fn import_rootfs(
    exec: &RemoteExec,
    addr: &str,
    dir: &str,
    mut archive: BoxRead,
) -> Result<()> {
    let line = format!(
        "mkdir -p -- {0} && cd -- {0} && exec tar {ROOTFS_FLAGS} -xpf -",
        shell_quote(dir)
    );
    let what = format!("import into `{dir}`");
    unpacked(exec, addr, line, &mut archive, &what)
        .await
        .map(drop)
}

/// Runs the unpacking command `line` with `archive` on its stdin; its stdout once it
/// succeeded, else its error (or the archive's, if reading that failed).
async fn unpacked(
    exec: &RemoteExec,
    addr: &str,
    line: String,
    archive: &mut BoxRead,
    what: &str,
) -> Result<Vec<u8>> {
    let process = start(exec, addr, line, true).await?;
    let mut stdin = process
        .take_stdin()
        .ok_or_else(|| Error::new(ErrorKind::Protocol, "the tar process has no stdin"))?;
    let fed = feed(archive, &mut stdin).await;
    drop(stdin);
    let out = process.output().await?;
    if !out.status.success() {
        return Err(failure(addr, what, &out.stderr));
    }
    fed.map_err(|e| Error::io(format_args!("{what} on `{addr}`"), e))?;
    Ok(out.stdout)
}

/// The stdout of the remote command `line` as a stream that fails when the command does.
async fn packed(exec: &RemoteExec, addr: &str, line: String, what: String) -> Result<BoxRead> {
    let process = start(exec, addr, line, false).await?;
    let mut stdout = process
        .take_stdout()
        .ok_or_else(|| Error::new(ErrorKind::Protocol, "the tar process has no stdout"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let addr = addr.to_owned();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        match process.output().await {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let err = failure(&addr, &what, &out.stderr);
                let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
            }
            Err(err) => {
                let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The SHA-256 of one file: OpenSSL where installed (about four times faster than
/// coreutils), else `sha256sum`. A missing hasher, or output we cannot read, is
/// `Unsupported`, so that callers read the file back instead.
pub(crate) async fn sha256(exec: &RemoteExec, addr: &str, path: &str) -> Result<[u8; 32]> {
    let quoted = shell_quote(path);
    let line = format!(
        "if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r -- {quoted}; \
         else sha256sum -b -- {quoted}; fi"
    );
    let out = start(exec, addr, line, false).await?.output().await?;
    let what = format!("hash `{path}`");
    if !out.status.success() {
        let err = failure(addr, &what, &out.stderr);
        return Err(match (out.status.shell_code(), err.kind()) {
            (126 | 127, _) | (_, ErrorKind::Io) => {
                Error::new(ErrorKind::Unsupported, err.message().to_owned())
            }
            _ => err,
        });
    }
    parse_sums(&out.stdout)
        .and_then(|sums| sums.into_iter().next())
        .map(|(_, digest)| digest)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!("{what} on `{addr}`: unexpected output from the hasher"),
            )
        })
}

/// The SHA-256 of every regular file under `dir`.
pub(crate) async fn sha256_tree(
    exec: &RemoteExec,
    addr: &str,
    dir: &str,
) -> Result<Vec<(String, [u8; 32])>> {
    let line = format!("cd -- {} && {HASH_ALL}", shell_quote(dir));
    let out = start(exec, addr, line, false).await?.output().await?;
    if !out.status.success() {
        return Err(failure(
            addr,
            &format!("hash the tree `{dir}`"),
            &out.stderr,
        ));
    }
    parse_sums(&out.stdout).ok_or_else(|| {
        Error::new(
            ErrorKind::Protocol,
            format!("hash the tree `{dir}` on `{addr}`: unexpected output from sha256sum"),
        )
    })
}

/// Flushes the file system holding `path`.
pub(crate) async fn sync_tree(exec: &RemoteExec, addr: &str, path: &str) -> Result<()> {
    let line = format!("sync -f -- {} 2>/dev/null || sync", shell_quote(path));
    let out = start(exec, addr, line, false).await?.output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failure(addr, &format!("sync `{path}`"), &out.stderr))
    }
}

/// `sha256sum -b` lines (`HEX *./NAME`; `\HEX *./NAME` with `\\`, `\n`, `\r` escaped in the
/// name) as relative names and digests.
pub(crate) fn parse_sums(out: &[u8]) -> Option<Vec<(String, [u8; 32])>> {
    let mut sums = Vec::new();
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let hex = line.get(..64)?;
        let name = line.get(66..)?;
        let mut digest = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            digest[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        let mut plain = Vec::with_capacity(name.len());
        let mut bytes = name.iter();
        while let Some(&b) = bytes.next() {
            if escaped && b == b'\\' {
                match bytes.next() {
                    Some(b'n') => plain.push(b'\n'),
                    Some(b'r') => plain.push(b'\r'),
                    Some(&other) => plain.push(other),
                    None => return None,
                }
            } else {
                plain.push(b);
            }
        }
        let name = String::from_utf8(plain).ok()?;
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        sums.push((name, digest));
    }
    Some(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_with_escaped_names() {
        let hex = "b7b5fdcb54e1150682614ed7adee194d4458b6c5b6661489174e7d63b49e9382";
        let out = format!("{hex} *./a b/é\n\\{hex} *./x\\ny\\\\z\n");
        let sums = parse_sums(out.as_bytes()).unwrap();
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].0, "a b/é");
        assert_eq!(sums[1].0, "x\ny\\z");
        assert_eq!(sums[1].1[0], 0xb7);
        assert!(parse_sums(b"garbage").is_none());
    }

    #[test]
    fn the_python_follower_fits_in_single_quotes_and_can_say_it_cannot_hash() {
        assert!(
            !FOLLOW_PYTHON.contains('\''),
            "it travels inside single quotes"
        );
        assert!(FOLLOW_PYTHON.contains(&format!("sys.exit({PYTHON_CANNOT_HASH})")));
        let script = follow_script("/tmp/it's here", true);
        assert!(script.contains("python3 -I -c"), "{script}");
        assert!(script.contains(" \"$f\" 1;"), "{script}");
    }

    #[test]
    fn one_digest_as_sha256sum_or_openssl_prints_it() {
        let hex = "b7b5fdcb54e1150682614ed7adee194d4458b6c5b6661489174e7d63b49e9382";
        let first = |out: String| parse_sums(out.as_bytes()).and_then(|s| s.into_iter().next());
        let digest = first(format!("{hex} *big\n")).map(|(_, d)| d);
        assert_eq!(digest.map(|d| d[0]), Some(0xb7));
        let escaped = first(format!("\\{hex} *a\\nb\n")).map(|(_, d)| d);
        assert_eq!(escaped, digest);
        assert_eq!(first("sha256sum: x: No such file".to_owned()), None);
    }
}
