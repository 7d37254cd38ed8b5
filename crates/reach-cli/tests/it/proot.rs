//! `proot://DIR` from the command line: exec with exit codes and signals, binds, and files
//! copied in and out, in a busybox root file system made on the spot.

use crate::reach;

fn root_or_skip(test: &str) -> Option<tempfile::TempDir> {
    let found = std::process::Command::new("proot")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        reach_test::skip(test, "proot is not installed (apt-get install proot)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    reach_test::docker::busybox_rootfs(dir.path()).unwrap();
    Some(dir)
}

#[test]
fn exec_and_cp_in_a_root_file_system() {
    let Some(dir) = root_or_skip("reach exec proot://") else {
        return;
    };
    let dest = format!("proot://{}", dir.path().display());
    let out = reach(&[
        "exec",
        &dest,
        "--",
        "sh",
        "-c",
        "pwd; ls /; echo err >&2; exit 5",
    ])
    .run();
    assert_eq!(out.code, 5, "{}", out.stderr);
    let listed = out.stdout_text();
    assert!(
        listed.starts_with("/root\n") && listed.contains("\nbin\n"),
        "{listed}"
    );
    assert_eq!(out.stderr, "err\n");
    let out = reach(&["exec", &dest, "--", "sh", "-c", "true | cat; kill -TERM $$"]).run();
    assert_eq!(out.code, 143, "{}", out.stderr);

    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("shared"), "from the host\n").unwrap();
    let bind = format!("{}:/mnt/host", host.path().display());
    let out = reach(&[
        "exec",
        "--proot-bind",
        &bind,
        &dest,
        "--",
        "cat",
        "/mnt/host/shared",
    ])
    .run();
    assert_eq!(
        (out.code, out.stdout_text().as_str()),
        (0, "from the host\n"),
        "{}",
        out.stderr
    );

    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(host.path().join("up.bin"), &data).unwrap();
    let inside = format!("{dest}:/tmp/up.bin");
    let out = reach(&["cp", host.path().join("up.bin").to_str().unwrap(), &inside]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(dir.path().join("tmp/up.bin")).unwrap(), data);
    let back = host.path().join("back.bin");
    let out = reach(&["cp", &inside, back.to_str().unwrap()]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = reach(&["exec", "proot:///nonexistent/root", "--", "true"]).run();
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/nonexistent/root"), "{}", out.stderr);
}
