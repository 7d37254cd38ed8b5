//! `reach pull IMAGE DIR`: an image into a root file system (`reach-oci`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use reach_oci::{PullOptions, PullProgress};

use crate::cli::PullArgs;
use crate::output;

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
/// cleared when the task ends.
async fn draw(progress: Arc<PullProgress>) {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{percent:>3}% {bytes} / {total_bytes}  {bytes_per_sec}  layers {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = Clear(bar);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        bar.0.set_length(progress.total_bytes());
        bar.0.set_position(progress.fetched_bytes());
        let (applied, layers) = progress.layers();
        bar.0.set_message(format!("{applied}/{layers}"));
    }
}
