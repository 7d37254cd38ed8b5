//! `reach pull` then `reach exec proot://`: the daemonless `docker run`, against Debian's
//! registry on a loopback port and an image pushed there by `docker push`.

use crate::reach;

#[test]
fn pull_then_exec_in_proot_uses_the_image_config() {
    if !reach_test::registry::available_or_skip("reach pull") {
        return;
    }
    let found = std::process::Command::new("proot")
        .arg("--version")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        reach_test::skip(
            "reach pull",
            "proot is not installed (apt-get install proot)",
        );
        return;
    }
    let registry = reach_test::registry::RegistryFixture::start().unwrap();
    let image = registry
        .push(
            &reach_test::registry::layered_image(0).unwrap(),
            "reach-test/cli:1",
        )
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("img");
    let out = reach(&[
        "pull",
        "--json",
        "--insecure-registry",
        &registry.address(),
        &image,
        dir.to_str().unwrap(),
    ])
    .env("XDG_CACHE_HOME", work.path().join("cache"))
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert_eq!(report["layers"].as_array().unwrap().len(), 3, "{report}");
    let dest = format!("proot://{}", dir.display());
    let out = reach(&[
        "exec",
        &dest,
        "--",
        "sh",
        "-c",
        "pwd; echo $REACH_IMAGE; cat /opt/opaque/new",
    ])
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout_text(), "/opt\nlayered\nnew\n");

    // Pulling again: every blob from the cache; into an existing directory: refused.
    let again = work.path().join("again");
    let out = reach(&[
        "pull",
        "--json",
        "--insecure-registry",
        &registry.address(),
        &image,
        again.to_str().unwrap(),
    ])
    .env("XDG_CACHE_HOME", work.path().join("cache"))
    .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.json()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["cached"] == true));
    let out = reach(&[
        "pull",
        "--insecure-registry",
        &registry.address(),
        &image,
        dir.to_str().unwrap(),
    ])
    .run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    // A registry that is not there: unreachable, with the hint.
    let out = reach(&[
        "pull",
        "127.0.0.1:9/none:1",
        work.path().join("x").to_str().unwrap(),
    ])
    .run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("127.0.0.1:9/none:1"), "{}", out.stderr);
}
