//! `reach pull` against `skopeo copy` + `umoci unpack` of the same image from Debian's
//! registry on a loopback port, in the same run.

use std::path::PathBuf;
use std::process::Command;

use reach_test::registry::{layered_image, RegistryFixture};

use crate::{run_ok, runtime, time, Args, Section, Series};

/// Runs the pull scenario: an image of four layers, one of them `--size-mib` of random bytes.
pub fn run(args: &Args, _reach_bin: &PathBuf) -> Result<Vec<Section>, String> {
    let registry = RegistryFixture::start().map_err(|e| format!("registry: {e}"))?;
    let mib = args.size_mib.max(100);
    let local = layered_image(mib).map_err(|e| format!("image: {e}"))?;
    let image = registry
        .push(&local, "reach-bench/pull:1")
        .map_err(|e| format!("push: {e}"))?;
    let rt = runtime()?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut round = 0;
    let mut ours = Series::new("reach pull (fresh cache)");
    let mut theirs = Series::new("skopeo copy + umoci unpack");
    let rounds = args.transfers.max(3);
    for _ in 0..rounds {
        round += 1;
        let dir = work.path().join(format!("reach-{round}"));
        let options = reach_oci::PullOptions {
            insecure_registries: vec![registry.address()],
            cache: Some(work.path().join(format!("cache-{round}"))),
            ..reach_oci::PullOptions::default()
        };
        let (t, r) = time(|| rt.block_on(reach_oci::pull(&image, &dir, &options)));
        r.map_err(|e| e.to_string())?;
        ours.samples.push(t);
        let layout = work.path().join(format!("oci-{round}"));
        let bundle = work.path().join(format!("bundle-{round}"));
        let (t, r) = time(|| {
            run_ok(
                Command::new("skopeo")
                    .args(["copy", "--quiet", "--src-tls-verify=false"])
                    .arg(format!("docker://{image}"))
                    .arg(format!("oci:{}:img", layout.display())),
            )?;
            run_ok(
                Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:img", layout.display()))
                    .arg(&bundle),
            )
        });
        r?;
        theirs.samples.push(t);
        for dir in [dir, layout, bundle] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(vec![Section::latency(
        "reach pull",
        format!(
            "A four-layer image over busybox (whiteouts, an opaque directory, and {mib} MiB of \
             random bytes in a layer of its own), pushed by `docker push` to Debian's \
             docker-registry on a loopback port, {rounds} rounds, alternating: `reach pull` \
             into a new directory with an empty cache, against `skopeo copy` to an OCI layout \
             and `umoci unpack` of it (what the tests compare reach's tree with). The issue's \
             target: reach at most 1/1.5 of their time (a ratio of 0.67x or less)."
        ),
        &[theirs, ours],
    )])
}
