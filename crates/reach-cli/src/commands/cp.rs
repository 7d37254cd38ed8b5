//! `reach cp SRC... DEST`: the transfer engine behind scp-like arguments.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reach::transfer::{hex, CopyOptions, Endpoint, Progress, Summary, Transfer};
use reach::{Error, ErrorKind, Location};
use serde_json::{json, Value};

use crate::cli::CpArgs;
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
        eprint!("\r\x1b[K");
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

/// Redraws one status line on stderr until aborted: bytes, rate, ETA, files.
async fn draw(progress: Arc<Progress>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (done, total) = (progress.done_bytes(), progress.total_bytes());
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 && total > done {
            format_eta((total - done) as f64 / rate)
        } else {
            "--:--".to_owned()
        };
        let percent = (done * 100).checked_div(total).unwrap_or(0);
        let line = format!(
            "\r\x1b[K{percent:>3}% {} / {}  {}/s  ETA {eta}  files {}/{}",
            bytes(done as f64),
            bytes(total as f64),
            bytes(rate),
            progress.done_files(),
            progress.total_files()
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn format_eta(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{}:{:02}", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512.0), "512.0 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(1024.0 * 1024.0 * 1024.0), "1.0 GiB");
        assert_eq!(format_eta(125.4), "2:05");
    }
}
