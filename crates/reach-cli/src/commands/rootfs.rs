//! `reach rootfs export` and `reach rootfs import`: root file systems as tar streams,
//! through each backend's `export_rootfs` and `import_rootfs`.

use std::path::{Path, PathBuf};

use reach::{Error, ErrorKind, Location};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{RootfsAction, RootfsArgs};
use crate::output;

pub async fn rootfs(args: RootfsArgs, json: bool) -> reach::Result<i32> {
    match args.action {
        RootfsAction::Export { source, file } => export(&source, &file, json).await,
        RootfsAction::Import { file, destination } => import(&file, &destination, json).await,
    }
}

/// `DEST[:PATH]`: a destination alone means its whole file system.
fn location(text: &str) -> reach::Result<Location> {
    match Location::parse(text) {
        Ok(location) => Ok(location),
        Err(first) => match reach::Destination::parse(text) {
            Ok(destination) if !destination.is_local() => Ok(Location {
                destination,
                path: "/".to_owned(),
            }),
            _ => Err(first),
        },
    }
}

/// `FILE.part` beside `file`, renamed over it once complete.
fn part_of(file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    file.with_file_name(name)
}

async fn export(source: &str, file: &str, json: bool) -> reach::Result<i32> {
    let from = location(source)?;
    let backend = super::connect(&from.destination).await?;
    let fs = backend.fs().await?;
    let mut stream = fs.export_rootfs(&from.path).await?;
    let (bytes, landed) = if file == "-" {
        let mut stdout = tokio::io::stdout();
        let bytes = copy(&mut stream, &mut stdout, &from).await?;
        stdout
            .flush()
            .await
            .map_err(|e| Error::io("write the export to stdout", e))?;
        (bytes, "-".to_owned())
    } else {
        let target = PathBuf::from(file);
        let part = part_of(&target);
        let written = async {
            let mut out = tokio::fs::File::create(&part)
                .await
                .map_err(|e| Error::io(format!("create `{}`", part.display()), e))?;
            let bytes = copy(&mut stream, &mut out, &from).await?;
            out.sync_all()
                .await
                .map_err(|e| Error::io(format!("sync `{}`", part.display()), e))?;
            Ok::<u64, Error>(bytes)
        }
        .await;
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                // Nothing half-written is left where the file was asked for.
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&part, &target)
            .await
            .map_err(|e| Error::io(format!("rename `{}` to `{file}`", part.display()), e))?;
        (bytes, file.to_owned())
    };
    if json {
        output::print_json(&json!({"source": from.to_string(), "file": landed, "bytes": bytes}));
    }
    Ok(0)
}

async fn copy(
    stream: &mut reach::BoxRead,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    from: &Location,
) -> reach::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("export `{from}`"), e))?;
        if n == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| Error::io(format!("write the export of `{from}`"), e))?;
        total += n as u64;
    }
}

async fn import(file: &str, destination: &str, json: bool) -> reach::Result<i32> {
    let to = Location::parse(destination)?;
    if to.destination.is_local() && destination == to.path && !destination.starts_with('/') {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "import into `{destination}`: give the directory as DEST:PATH or an absolute path"
            ),
        ));
    }
    let archive: reach::BoxRead = if file == "-" {
        Box::pin(tokio::io::stdin())
    } else {
        Box::pin(
            tokio::fs::File::open(file)
                .await
                .map_err(|e| Error::io(format!("open `{file}`"), e))?,
        )
    };
    let backend = super::connect(&to.destination).await?;
    let fs = backend.fs().await?;
    fs.import_rootfs(&to.path, archive).await?;
    if json {
        output::print_json(&json!({"file": file, "destination": to.to_string()}));
    }
    Ok(0)
}
