//! Paths that try to leave the root: `..`, absolute and relative symbolic links, made by the
//! caller or found in the root. None reaches a file outside it, and the files outside are
//! unchanged after every attempt.

use std::os::unix::fs::PermissionsExt;

use reach_core::{ErrorKind, ExecSpec, FileSystemExt, ProcessExt};

#[tokio::test]
async fn dot_dot_and_symlinks_stay_inside_the_root() {
    let Some(fixture) = crate::fixture("proot escapes") else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside").unwrap();
    let secret_path = secret.display().to_string();
    let root = fixture.peer.dir.path().canonicalize().unwrap();
    let fs = fixture.backend.fs().await.unwrap();

    // Reading: `..` past the root, and links pointing out, find nothing outside.
    let depth = "/..".repeat(root.components().count() + 2);
    for path in [
        format!("{depth}{secret_path}"),
        format!("/scratch{depth}{secret_path}"),
    ] {
        let err = fs.read(&path).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{path}: {err}");
    }
    fs.symlink(&secret_path, "/scratch/abs").await.unwrap();
    fs.symlink(&format!("{depth}{secret_path}"), "/scratch/rel")
        .await
        .unwrap();
    std::os::unix::fs::symlink(&secret, root.join("scratch/planted")).unwrap();
    for link in ["/scratch/abs", "/scratch/rel", "/scratch/planted"] {
        let err = fs.read(link).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{link}: {err}");
        assert!(
            !err.message().contains(&root.display().to_string()),
            "{err}"
        );
    }

    // Writing through them lands inside, at the path they name there.
    let parent = outside.path().display().to_string();
    fs.create_dir_all(&parent).await.unwrap();
    fs.write("/scratch/abs", b"written").await.unwrap();
    assert_eq!(
        std::fs::read(root.join(secret_path.trim_start_matches('/'))).unwrap(),
        b"written"
    );
    fs.write(&format!("/scratch{depth}/tmp/dotdot"), b"x")
        .await
        .unwrap();
    assert!(root.join("tmp/dotdot").exists());
    fs.symlink("/", "/scratch/to-root").await.unwrap();
    fs.create_dir_all("/scratch/to-root/made/here")
        .await
        .unwrap();
    assert!(root.join("made/here").is_dir());
    // A link planted by someone else names a path inside as well: the copy there changes.
    fs.set_permissions("/scratch/planted", 0o600).await.unwrap();

    // Removing a tree with links to outside leaves outside alone.
    fs.remove_dir_all("/scratch").await.unwrap();
    assert!(!root.join("scratch").exists());
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside");
    assert!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777 != 0o600);

    // A command sees the root as `/`, not this host's files.
    let out = fixture
        .backend
        .exec(ExecSpec::shell(format!(
            "cat '{secret_path}' '{depth}{secret_path}'; ls /"
        )))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(!seen.contains("outside"), "{seen}");
    assert!(
        seen.starts_with("writtenwritten"),
        "the copies inside: {seen}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("denied"),
        "{out:?}"
    );
}

/// Without `proot` the backend says which package to install.
#[test]
fn a_missing_proot_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let destination =
        reach_core::Destination::parse(&format!("proot://{}", dir.path().display())).unwrap();
    let err = reach_proot::ProotBackend::new(
        destination,
        reach_proot::ProotOptions {
            proot: Some("/nonexistent/proot".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("apt-get install proot"), "{err}");
    let err = reach_proot::ProotBackend::new(
        reach_core::Destination::parse("proot:///nonexistent/root").unwrap(),
        reach_proot::ProotOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("/nonexistent/root"), "{err}");
}
