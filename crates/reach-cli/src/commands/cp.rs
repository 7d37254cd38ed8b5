//! `reach cp SRC... DEST`: the transfer engine behind scp-like arguments.

use std::io::IsTerminal;
use std::sync::Arc;

use reach::transfer::{hex, CopyOptions, Endpoint, Progress, Summary, Transfer};
use reach::{Error, ErrorKind, Location};
use serde_json::{json, Value};

use crate::cli::CpArgs;
use crate::progress::Sample;
use crate::{exit, output};

/// Exit code after Ctrl-C or SIGTERM, as a shell reports SIGINT.
const INTERRUPTED: i32 = 130;

pub async fn cp(args: CpArgs, json: bool) -> reach::Result<i32> {
    let Some((dest, sources)) = args.locations.split_last() else {
        return Err(Error::new(ErrorKind::InvalidInput, "cp needs SRC... DEST"));
    };
    let mut from = Vec::new();
    for source in sources {
        from.extend(source_endpoints(source).await?);
    }
    let to = endpoint(dest).await?;
    let options = CopyOptions::default()
        .recursive(args.recursive)
        .preserve(args.preserve)
        .resume(args.resume)
        .concurrency(args.jobs)
        .verify(!args.no_verify)
        .sync(!args.no_fsync);
    let transfer = Transfer::new(options);
    let bar = (!json && !args.quiet && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(draw(transfer.progress())));
    let outcome = tokio::select! {
        outcome = transfer.copy(&from, &to) => Some(outcome),
        () = interrupted() => None,
    };
    if let Some(bar) = bar {
        bar.abort();
        let _ = bar.await;
    }
    let Some(outcome) = outcome else {
        let removed = transfer.abandon().await;
        if args.resume {
            eprintln!("reach: interrupted; partial files kept for `reach cp --resume`");
        } else {
            eprintln!(
                "reach: interrupted; removed {removed} partial file(s), destinations unchanged"
            );
        }
        return Ok(INTERRUPTED);
    };
    let summary = outcome?;
    for failure in &summary.failures {
        output::report_error(&failure.error, false);
    }
    if json {
        output::print_json(&summary_json(&summary));
    }
    Ok(summary.first_error().map_or(0, exit::for_error))
}

async fn endpoint(argument: &str) -> reach::Result<Endpoint> {
    let location = Location::parse(argument)?;
    let backend = super::connect(&location.destination).await?;
    Ok(Endpoint::new(backend, location.path))
}

/// A source argument's endpoints: one per path its wildcards match on the target.
async fn source_endpoints(argument: &str) -> reach::Result<Vec<Endpoint>> {
    let location = Location::parse(argument)?;
    let backend = super::connect(&location.destination).await?;
    let fs = backend.fs().await?;
    let paths = super::expand(argument, &location, fs.as_ref()).await?;
    Ok(paths
        .into_iter()
        .map(|path| Endpoint::new(backend.clone(), path))
        .collect())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn summary_json(summary: &Summary) -> Value {
    let files: Vec<Value> = summary
        .files
        .iter()
        .map(|f| {
            json!({
                "source": f.source,
                "dest": f.dest,
                "bytes": f.bytes,
                "sha256": hex(&f.sha256),
                "resumed_from": f.resumed_from,
                "verified": f.verified.as_str(),
            })
        })
        .collect();
    let failures: Vec<Value> = summary
        .failures
        .iter()
        .map(|f| {
            json!({
                "source": f.source,
                "kind": f.error.kind().as_str(),
                "message": f.error.to_string(),
            })
        })
        .collect();
    json!({
        "files": summary.files.len(),
        "dirs": summary.dirs,
        "symlinks": summary.symlinks,
        "bytes": summary.bytes,
        "seconds": summary.elapsed.as_secs_f64(),
        "copied": files,
        "failures": failures,
    })
}

/// Draws the copy's progress bar on stderr (bytes, rate, ETA, files) until aborted; the bar
/// Draws the copy's progress on stderr (bytes, rate, ETA, files) until aborted.
async fn draw(progress: Arc<Progress>) {
    let template = "{percent:>3}% {bytes} / {total_bytes}  {bytes_per_sec}  ETA {eta}  files {msg}";
    crate::progress::draw(template, || Sample {
        total: progress.total_bytes(),
        done: progress.done_bytes(),
        message: format!("{}/{}", progress.done_files(), progress.total_files()),
    })
    .await;
}
