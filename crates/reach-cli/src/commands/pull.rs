//! `reach pull IMAGE DIR`: an image into a root file system (`reach-oci`).

use std::io::IsTerminal;
use std::sync::Arc;

use reach_oci::{PullOptions, PullProgress};

use crate::cli::PullArgs;
use crate::output;
use crate::progress::Sample;

pub async fn pull(args: PullArgs, json: bool) -> reach::Result<i32> {
    let progress = Arc::new(PullProgress::default());
    let options = PullOptions {
        platform: args.platform,
        insecure_registries: args.insecure_registry,
        progress: Some(progress.clone()),
        ..PullOptions::default()
    };
    // A bar on a terminal only: in a pipe or with --json, just the outcome.
    let bar = (!json && std::io::stderr().is_terminal()).then(|| tokio::spawn(draw(progress)));
    let pulled = reach_oci::pull(&args.image, &args.dir, &options).await;
    if let Some(bar) = bar {
        bar.abort();
        let _ = bar.await;
    }
    let report = pulled?;
    if json {
        output::print_json(&serde_json::to_value(&report).unwrap_or_default());
    } else {
        let fetched = report.layers.iter().filter(|l| !l.cached).count();
        eprintln!(
            "reach: pulled {} ({}) into {}: {} layers, {fetched} fetched, {} from the cache",
            report.image,
            report.manifest,
            report.dir.display(),
            report.layers.len(),
            report.layers.len() - fetched
        );
    }
    Ok(0)
}

/// Draws the pull's progress on stderr (bytes fetched, rate, layers applied) until aborted;
/// Draws the pull's progress on stderr (bytes fetched, rate, layers applied) until aborted.
async fn draw(progress: Arc<PullProgress>) {
    let template = "{percent:>3}% {bytes} / {total_bytes}  {bytes_per_sec}  layers {msg}";
    crate::progress::draw(template, || {
        let (applied, layers) = progress.layers();
        Sample {
            total: progress.total_bytes(),
            done: progress.fetched_bytes(),
            message: format!("{applied}/{layers}"),
        }
    })
    .await;
}
