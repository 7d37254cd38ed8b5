//! The file subcommands: `ls`, `stat`, `cat`, `put`, `rm`, `mkdir`, `mv`, `chmod` on
//! `DEST:PATH` arguments.

use std::sync::Arc;

use reach::{DirEntry, Error, ErrorKind, FileSystem, FileType, Location, Metadata, WriteOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{ChmodArgs, LsArgs, MkdirArgs, MvArgs, PathsArgs, PutArgs, RmArgs};
use crate::{exit, output};

/// A parsed file argument with its connected file system.
struct Target {
    location: Location,
    fs: Arc<dyn FileSystem>,
}

async fn open(argument: &str) -> reach::Result<Target> {
    let location = Location::parse(argument)?;
    let backend = super::connect(&location.destination).await?;
    let fs = backend.fs().await?;
    Ok(Target { location, fs })
}

/// What a subcommand does with wildcards in its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wildcards {
    /// Paths are taken as written (they name what is to be created).
    Literal,
    /// Expanded on the target (see [`super::expand`]); no match is an error.
    Expand,
    /// Expanded on the target; no match is nothing to do (`rm -f`).
    ExpandOrNothing,
}

/// The targets an argument names: one per path its wildcards match.
async fn open_all(argument: &str, wildcards: Wildcards) -> reach::Result<Vec<Target>> {
    let target = open(argument).await?;
    if wildcards == Wildcards::Literal {
        return Ok(vec![target]);
    }
    let paths = match super::expand(argument, &target.location, target.fs.as_ref()).await {
        Err(e)
            if matches!(e.kind(), ErrorKind::NotFound)
                && wildcards == Wildcards::ExpandOrNothing =>
        {
            return Ok(Vec::new())
        }
        other => other?,
    };
    Ok(paths
        .into_iter()
        .map(|path| Target {
            location: Location {
                destination: target.location.destination.clone(),
                path,
            },
            fs: target.fs.clone(),
        })
        .collect())
}

/// Runs `each` on every path the arguments name, reporting failures as they happen and going
/// on with the rest (as `rm a b` does). Exits with the code of the last failure, or 0.
async fn for_each<F, Fut>(
    arguments: &[String],
    wildcards: Wildcards,
    json: bool,
    mut each: F,
) -> reach::Result<i32>
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = reach::Result<Option<Value>>>,
{
    let mut code = 0;
    let mut results = Vec::new();
    let mut report = |err: Error, path: &str, results: &mut Vec<Value>| {
        output::report_error(&err, false);
        if json {
            results.push(json!({"path": path, "error": {
                "kind": err.kind().as_str(), "message": err.to_string()}}));
        }
        code = exit::for_error(&err);
    };
    for argument in arguments {
        let targets = match open_all(argument, wildcards).await {
            Ok(targets) => targets,
            Err(err) => {
                report(err, argument, &mut results);
                continue;
            }
        };
        // (Of the path: `[::1]:/srv` holds brackets that are no wildcard.)
        let expanded = wildcards != Wildcards::Literal
            && Location::parse(argument).is_ok_and(|l| reach::glob::has_wildcards(&l.path));
        for target in targets {
            // A path as the user wrote it, unless a wildcard stood for it.
            let path = if expanded {
                target.location.to_string()
            } else {
                argument.clone()
            };
            match each(target).await {
                Ok(Some(value)) => results.push(value),
                Ok(None) => {}
                Err(err) => report(err, &path, &mut results),
            }
        }
    }
    if json {
        output::print_json(&Value::Array(results));
    }
    Ok(code)
}

fn metadata_json(name: &str, m: &Metadata, link_target: Option<String>) -> Value {
    json!({
        "path": name,
        "type": m.file_type.as_str(),
        "size": m.len,
        "mode": format!("{:04o}", m.mode),
        "modified": output::unix_seconds(m.modified),
        "uid": m.uid,
        "gid": m.gid,
        "link_target": link_target,
    })
}

fn long_line(name: &str, m: &Metadata, link_target: Option<&str>) -> String {
    let when = output::unix_seconds(m.modified)
        .map(output::format_utc)
        .unwrap_or_else(|| "-".repeat(16));
    let mut line = format!(
        "{} {:>12} {when} {name}",
        output::mode_string(m.file_type, m.mode),
        m.len
    );
    if let Some(target) = link_target {
        line.push_str(" -> ");
        line.push_str(target);
    }
    line
}

pub async fn ls(args: LsArgs, json: bool) -> reach::Result<i32> {
    let target = open(&args.location).await?;
    let paths = super::expand(&args.location, &target.location, target.fs.as_ref()).await?;
    // One directory lists its entries (`dir` is set); one other path, or the several that
    // wildcards matched, are listed as themselves, as `ls -d` does.
    let mut dir = None;
    let entries = match paths.as_slice() {
        [path] if target.fs.metadata(path).await?.is_dir() => {
            dir = Some(path.as_str());
            target.fs.read_dir(path).await?
        }
        _ => {
            let mut entries = Vec::with_capacity(paths.len());
            for path in &paths {
                entries.push(DirEntry {
                    name: path.clone(),
                    metadata: target.fs.symlink_metadata(path).await?,
                });
            }
            entries
        }
    };
    let mut listed = Vec::new();
    for entry in entries {
        if !args.all && entry.name.starts_with('.') && dir.is_some() {
            continue;
        }
        let link = if entry.metadata.file_type == FileType::Symlink && (args.long || json) {
            let full = match dir {
                Some(dir) => reach::path::join(dir, &entry.name),
                None => entry.name.clone(),
            };
            target.fs.read_link(&full).await.ok()
        } else {
            None
        };
        if json {
            listed.push(metadata_json(&entry.name, &entry.metadata, link));
        } else if args.long {
            println!(
                "{}",
                long_line(&entry.name, &entry.metadata, link.as_deref())
            );
        } else {
            println!("{}", entry.name);
        }
    }
    if json {
        output::print_json(&Value::Array(listed));
    }
    Ok(0)
}

pub async fn stat(args: PathsArgs, json: bool) -> reach::Result<i32> {
    for_each(&args.locations, Wildcards::Expand, json, |t| async move {
        let path = &t.location.path;
        let m = t.fs.symlink_metadata(path).await?;
        let link = match m.file_type {
            FileType::Symlink => Some(t.fs.read_link(path).await?),
            _ => None,
        };
        if json {
            return Ok(Some(metadata_json(&t.location.to_string(), &m, link)));
        }
        println!("{}", t.location);
        println!("  type      {}", m.file_type.as_str());
        if let Some(link) = link {
            println!("  target    {link}");
        }
        println!("  size      {}", m.len);
        println!(
            "  mode      {:04o} ({})",
            m.mode,
            output::mode_string(m.file_type, m.mode)
        );
        if let (Some(uid), Some(gid)) = (m.uid, m.gid) {
            println!("  owner     {uid}:{gid}");
        }
        if let Some(seconds) = output::unix_seconds(m.modified) {
            println!("  modified  {} UTC", output::format_utc(seconds));
        }
        Ok(None)
    })
    .await
}

pub async fn cat(args: PathsArgs) -> reach::Result<i32> {
    for_each(&args.locations, Wildcards::Expand, false, |t| async move {
        let mut reader = t.fs.open_read(&t.location.path).await?;
        let mut stdout = tokio::io::stdout();
        let context = || format!("copy `{}` to stdout", t.location);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| Error::io(format!("read `{}`", t.location), e))?;
            if n == 0 {
                break;
            }
            stdout
                .write_all(&buf[..n])
                .await
                .map_err(|e| Error::io(context(), e))?;
        }
        stdout.flush().await.map_err(|e| Error::io(context(), e))?;
        Ok(None)
    })
    .await
}

/// The temporary sibling a write lands in before it is renamed over its destination.
fn temp_sibling(path: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (format!("{dir}/"), name),
        None => (String::new(), path),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{dir}.{name}.reach-put-{}-{nanos}", std::process::id())
}

pub async fn put(args: PutArgs, json: bool) -> reach::Result<i32> {
    let target = open(&args.location).await?;
    let path = &target.location.path;
    if let Ok(meta) = target.fs.metadata(path).await {
        if meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "`{}` is a directory: name the file to write",
                    target.location
                ),
            ));
        }
    }
    let temp = temp_sibling(path);
    let written = write_stdin(&*target.fs, &temp, args.mode).await;
    let landed = match written {
        Ok(bytes) => match target.fs.set_permissions(&temp, args.mode).await {
            Ok(()) => target.fs.rename(&temp, path).await.map(|()| bytes),
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    match landed {
        Ok(bytes) => {
            if json {
                output::print_json(&json!({"path": target.location.to_string(), "bytes": bytes}));
            }
            Ok(0)
        }
        Err(err) => {
            // The destination was never touched; only the temporary goes.
            let _ = target.fs.remove_file(&temp).await;
            Err(err)
        }
    }
}

async fn write_stdin(fs: &dyn FileSystem, temp: &str, mode: u32) -> reach::Result<u64> {
    let options = WriteOptions {
        create_new: true,
        mode,
        ..WriteOptions::default()
    };
    let mut writer = fs.open_write(temp, options).await?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = stdin
            .read(&mut buf)
            .await
            .map_err(|e| Error::io("read stdin", e))?;
        if n == 0 {
            break;
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|e| Error::io(format!("write `{temp}`"), e))?;
        total += n as u64;
    }
    writer
        .shutdown()
        .await
        .map_err(|e| Error::io(format!("finish `{temp}`"), e))?;
    Ok(total)
}

pub async fn rm(args: RmArgs, json: bool) -> reach::Result<i32> {
    let (recursive, force) = (args.recursive, args.force);
    let wildcards = if force {
        Wildcards::ExpandOrNothing
    } else {
        Wildcards::Expand
    };
    for_each(&args.locations, wildcards, json, |t| async move {
        let path = &t.location.path;
        let meta = match t.fs.symlink_metadata(path).await {
            Err(err) if force && matches!(err.kind(), ErrorKind::NotFound) => return Ok(None),
            other => other?,
        };
        if meta.is_dir() {
            if !recursive {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "`{}` is a directory: use -r to remove it and its contents",
                        t.location
                    ),
                ));
            }
            t.fs.remove_dir_all(path).await?;
        } else {
            t.fs.remove_file(path).await?;
        }
        Ok(json.then(|| json!({"path": t.location.to_string(), "removed": true})))
    })
    .await
}

pub async fn mkdir(args: MkdirArgs, json: bool) -> reach::Result<i32> {
    let parents = args.parents;
    for_each(&args.locations, Wildcards::Literal, json, |t| async move {
        if parents {
            t.fs.create_dir_all(&t.location.path).await?;
        } else {
            t.fs.create_dir(&t.location.path).await?;
        }
        Ok(json.then(|| json!({"path": t.location.to_string(), "created": true})))
    })
    .await
}

pub async fn chmod(args: ChmodArgs, json: bool) -> reach::Result<i32> {
    let mode = args.mode;
    for_each(&args.locations, Wildcards::Expand, json, |t| async move {
        t.fs.set_permissions(&t.location.path, mode).await?;
        Ok(json.then(|| json!({"path": t.location.to_string(), "mode": format!("{mode:04o}")})))
    })
    .await
}

pub async fn mv(args: MvArgs, json: bool) -> reach::Result<i32> {
    let from = open(&args.from).await?;
    let to = Location::parse(&args.to)?;
    // A bare path as the second argument names a path on the first one's destination.
    let to_path = if to.destination == from.location.destination {
        to.path
    } else if to.destination.is_local() && !args.to.starts_with("local:") {
        args.to.clone()
    } else {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "`reach mv` renames within one destination, but `{}` and `{}` are on different \
                 ones: copy across destinations with `reach cp`",
                from.location, to
            ),
        ));
    };
    // Moving onto a directory moves into it, as mv(1) does.
    let to_path = match from.fs.metadata(&to_path).await {
        Ok(m) if m.is_dir() => {
            reach::path::join(&to_path, reach::path::file_name(&from.location.path))
        }
        _ => to_path,
    };
    from.fs.rename(&from.location.path, &to_path).await?;
    if json {
        output::print_json(&json!({"from": from.location.to_string(), "to": to_path}));
    }
    Ok(0)
}
