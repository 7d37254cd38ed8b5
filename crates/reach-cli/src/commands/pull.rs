//! `reach pull IMAGE DIR`: an image into a root file system (`reach-oci`).

use reach_oci::PullOptions;

use crate::cli::PullArgs;
use crate::output;

pub async fn pull(args: PullArgs, json: bool) -> reach::Result<i32> {
    let options = PullOptions {
        platform: args.platform,
        insecure_registries: args.insecure_registry,
        ..PullOptions::default()
    };
    let report = reach_oci::pull(&args.image, &args.dir, &options).await?;
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
