//! `reach pull` against Debian's real registry on a loopback port, with a layered image
//! pushed by the real `docker push`, compared with what `skopeo copy` + `umoci unpack` make
//! of the same image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use reach_core::ErrorKind;
use reach_oci::{pull, PullOptions};
use reach_test::registry::{layered_image, tree_listing, RegistryFixture};

fn options(registry: &RegistryFixture, cache: &Path) -> PullOptions {
    PullOptions {
        insecure_registries: vec![registry.address()],
        cache: Some(cache.to_owned()),
        docker_config: Some(cache.join("no-docker-config.json")),
        ..PullOptions::default()
    }
}

fn tools_or_skip(test: &str) -> bool {
    if !reach_test::registry::available_or_skip(test) {
        return false;
    }
    for tool in ["skopeo", "umoci"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            reach_test::skip(
                test,
                &format!("{tool} is not installed (apt-get install {tool})"),
            );
            return false;
        }
    }
    true
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pulled tree is umoci's tree, entry for entry: whiteouts and opaque directories
/// applied, owners, modes, links and contents kept; the image config is saved beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layered_image_pulls_to_the_same_tree_as_skopeo_and_umoci() {
    if !tools_or_skip("reach pull") {
        return;
    }
    let registry = RegistryFixture::start().unwrap();
    let image = registry
        .push(&layered_image(0).unwrap(), "reach-test/layers:1")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("rootfs");
    let progress = std::sync::Arc::new(reach_oci::PullProgress::default());
    let mut with_progress = options(&registry, &work.path().join("cache"));
    with_progress.progress = Some(progress.clone());
    let report = pull(&image, &dir, &with_progress).await.unwrap();
    assert_eq!(report.layers.len(), 3, "{report:?}");
    // The counters a progress bar reads came to the end.
    let sizes: u64 = report.layers.iter().map(|l| l.size).sum();
    assert_eq!(progress.total_bytes(), sizes);
    assert_eq!(progress.fetched_bytes(), sizes);
    assert_eq!(progress.layers(), (3, 3));
    assert!(report.layers.iter().all(|l| !l.cached));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.config).unwrap()).unwrap();
    assert_eq!(config["config"]["WorkingDir"], "/opt", "{config}");
    assert_eq!(
        config["config"]["Env"][0], "REACH_IMAGE=layered",
        "{config}"
    );

    let layout = work.path().join("oci");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:img", layout.display())));
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:img", layout.display()))
        .arg(&bundle));
    let ours = tree_listing(&dir).unwrap();
    let theirs = tree_listing(&bundle.join("rootfs")).unwrap();
    let differ: Vec<_> = ours
        .iter()
        .filter(|l| !theirs.contains(l))
        .chain(theirs.iter().filter(|l| !ours.contains(l)))
        .collect();
    assert!(differ.is_empty(), "reach and umoci differ on: {differ:#?}");

    for gone in ["opt/a/file", "opt/opaque/old", "bin/vi"] {
        assert!(
            std::fs::symlink_metadata(dir.join(gone)).is_err(),
            "{gone} survived its whiteout"
        );
    }
    assert_eq!(std::fs::read(dir.join("opt/opaque/new")).unwrap(), b"new\n");
    assert!(
        ours.iter()
            .any(|l| l.starts_with("opt/keep 644 1000:1000 file")),
        "{ours:#?}"
    );
}

/// A blob whose bytes are not what its digest names is refused, and no root file system,
/// complete or partial, is left; a pull cut off by a missing blob resumes, fetching only
/// what it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_is_refused_and_a_cut_off_pull_resumes() {
    if !tools_or_skip("reach pull: corrupted and resumed") {
        return;
    }
    let registry = RegistryFixture::start().unwrap();
    let image = registry
        .push(&layered_image(0).unwrap(), "reach-test/broken:1")
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    // Learn the layers from a first pull (into a cache of its own).
    let first = pull(
        &image,
        &work.path().join("first"),
        &options(&registry, &work.path().join("c1")),
    )
    .await
    .unwrap();
    let top = first.layers.last().unwrap().digest.clone();

    // The registry's copy of the top layer is damaged, same size.
    let blob = registry.blob_file(&top);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let dir = work.path().join("second");
    let err = pull(&image, &dir, &options(&registry, &work.path().join("c2")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains(&top), "{err}");
    assert!(!dir.exists(), "a partial root was left");
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("reach-pull"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Cut off: the blob is gone from the registry; the others are fetched and kept.
    std::fs::remove_file(&blob).unwrap();
    let cache = work.path().join("c3");
    assert!(pull(
        &image,
        &work.path().join("third"),
        &options(&registry, &cache)
    )
    .await
    .is_err());
    std::fs::write(&blob, &good).unwrap();
    let resumed = pull(
        &image,
        &work.path().join("third"),
        &options(&registry, &cache),
    )
    .await
    .unwrap();
    let fetched: Vec<_> = resumed
        .layers
        .iter()
        .filter(|l| !l.cached)
        .map(|l| l.digest.clone())
        .collect();
    assert_eq!(fetched, vec![top.clone()], "{resumed:?}");
    assert_eq!(
        tree_listing(&work.path().join("third")).unwrap(),
        tree_listing(&work.path().join("first")).unwrap()
    );

    // Bad input: a reference that is not one, and a directory that exists.
    let err = pull(
        "UPPER/Case:tag:x",
        &work.path().join("x"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = pull(
        &image,
        &work.path().join("first"),
        &options(&registry, &cache),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
}

/// A manifest list: `--platform` picks its entry, and this machine's is the default; a
/// platform the list does not have is named in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_is_picked_from_a_manifest_list() {
    if !reach_test::registry::available_or_skip("reach pull --platform") {
        return;
    }
    let registry = RegistryFixture::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let tree = work.path().join(arch);
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("which"), arch).unwrap();
        let tag = format!("reach-test-platform:{arch}");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        let mut import = Command::new("docker")
            .args(["import", "-", &tag])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tar.stdout).unwrap();
        assert!(import.wait().unwrap().success());
        let pushed = registry
            .push(&tag, &format!("reach-test/platform:{arch}"))
            .unwrap();
        // The manifest as the registry holds it: its digest and size go in the list.
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference: oci_client::Reference = pushed.parse().unwrap();
        let media = "application/vnd.docker.distribution.manifest.v2+json";
        let (bytes, digest) = client
            .pull_manifest_raw(
                &reference,
                &oci_client::secrets::RegistryAuth::Anonymous,
                &[media],
            )
            .await
            .unwrap();
        entries.push(serde_json::json!({
            "mediaType": media,
            "digest": digest,
            "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index: oci_client::manifest::OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let list = format!("{}/reach-test/platform:list", registry.address());
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    client
        .push_manifest_list(
            &list.parse().unwrap(),
            &oci_client::secrets::RegistryAuth::Anonymous,
            index,
        )
        .await
        .unwrap();

    let cache = work.path().join("cache");
    let mut arm = options(&registry, &cache);
    arm.platform = Some("linux/arm64".to_owned());
    pull(&list, &work.path().join("arm"), &arm).await.unwrap();
    assert_eq!(
        std::fs::read(work.path().join("arm/which")).unwrap(),
        b"arm64"
    );
    pull(
        &list,
        &work.path().join("here"),
        &options(&registry, &cache),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("here/which")).unwrap(),
        b"amd64"
    );
    let mut none = options(&registry, &cache);
    none.platform = Some("linux/riscv64".to_owned());
    let err = pull(&list, &work.path().join("none"), &none)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("reach-test/platform:list"), "{err}");
    assert!(err.message().contains("linux/riscv64"), "{err}");
    assert!(!work.path().join("none").exists());
}

/// A registry that wants a password: `docker login`'s credentials (the docker CLI's own
/// `config.json`) let the pull in; none, or a wrong password, is `AuthFailed` that says how
/// to log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_docker_login() {
    if !reach_test::registry::available_or_skip("reach pull: credentials") {
        return;
    }
    let registry = RegistryFixture::start_with_password("alice", "s3cret").unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("docker");
    registry.login(&config, "alice", "s3cret").unwrap();
    let image = registry
        .push_as(
            Some(&config),
            &reach_test::docker::busybox_image().unwrap(),
            "reach-test/private:1",
        )
        .unwrap();

    let mut options = options(&registry, &work.path().join("cache"));
    let err = pull(&image, &work.path().join("anonymous"), &options)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(err.to_string().contains("docker login"), "{err}");
    assert!(!work.path().join("anonymous").exists());

    options.docker_config = Some(config.join("config.json"));
    let pulled = pull(&image, &work.path().join("root"), &options)
        .await
        .unwrap();
    assert!(!pulled.layers.is_empty());
    assert!(work.path().join("root/bin/busybox").is_file());

    // The same user, the wrong password.
    let wrong = work.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:not-it");
    std::fs::write(
        wrong.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.address()
        ),
    )
    .unwrap();
    options.docker_config = Some(wrong.join("config.json"));
    options.cache = Some(work.path().join("cache2"));
    let err = pull(&image, &work.path().join("denied"), &options)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
}

/// Layers compressed with zstd (recompressed by `skopeo copy --dest-compress-format zstd`,
/// into an OCI manifest) pull to the same tree as the gzip original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_layers_pull_to_the_same_tree_as_gzip_ones() {
    if !tools_or_skip("reach pull: zstd layers") {
        return;
    }
    let registry = RegistryFixture::start().unwrap();
    let image = registry
        .push(&layered_image(0).unwrap(), "reach-test/gzip:1")
        .unwrap();
    let zstd = format!("{}/reach-test/zstd:1", registry.address());
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "zstd",
        "--format",
        "oci",
        &format!("docker://{image}"),
        &format!("docker://{zstd}"),
    ]));
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{zstd}"))
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest.stdout).into_owned();
    assert!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "skopeo did not make zstd layers: {manifest}"
    );

    let work = tempfile::tempdir().unwrap();
    let options = options(&registry, &work.path().join("cache"));
    pull(&image, &work.path().join("gzip"), &options)
        .await
        .unwrap();
    let pulled = pull(&zstd, &work.path().join("zstd"), &options)
        .await
        .unwrap();
    assert!(pulled.layers.iter().all(|l| !l.cached), "{pulled:?}");
    assert_eq!(
        tree_listing(&work.path().join("zstd")).unwrap(),
        tree_listing(&work.path().join("gzip")).unwrap()
    );
}

/// Token authentication, as Docker Hub and most registries do it: the registry answers 401
/// naming a token service, which gives a signed token for the credentials `docker login`
/// keeps; without them the pull is `AuthFailed`, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication_uses_the_docker_credentials() {
    if !reach_test::registry::available_or_skip("reach pull: token authentication") {
        return;
    }
    let mut registry = RegistryFixture::start().unwrap();
    let image = registry
        .push(
            &reach_test::docker::busybox_image().unwrap(),
            "reach-test/token:1",
        )
        .unwrap();
    registry.require_token("bob", "t0ken").unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut options = options(&registry, &work.path().join("cache"));
    let err = pull(&image, &work.path().join("anonymous"), &options)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(!work.path().join("anonymous").exists());

    // What `docker login` writes.
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bob:t0ken");
    let config = work.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.address()
        ),
    )
    .unwrap();
    options.docker_config = Some(config);
    pull(&image, &work.path().join("root"), &options)
        .await
        .unwrap();
    assert!(work.path().join("root/bin/busybox").is_file());
}
