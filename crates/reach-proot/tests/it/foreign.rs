//! A root file system of another architecture (Debian's arm64 busybox), run through proot's
//! `-q qemu-aarch64-static` from Debian's `qemu-user-static`: outputs, exit codes and deaths
//! by signal come through as on the host, and the platform is the root's.

use std::sync::Arc;

use reach_core::{
    Backend, Destination, ErrorKind, ExecSpec, ExitStatus, FileSystemExt, ProcessExt, Signal,
};
use reach_proot::{ProotBackend, ProotOptions};

const QEMU: &str = "qemu-aarch64-static";

#[tokio::test]
async fn an_arm64_root_runs_under_qemu() {
    if !crate::proot_or_skip("proot: an arm64 root under qemu") {
        return;
    }
    let found = std::process::Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        reach_test::skip(
            "proot: an arm64 root under qemu",
            "qemu-aarch64-static is not installed (apt-get install qemu-user-static)",
        );
        return;
    }
    let busybox = match reach_test::foreign::arm64_busybox() {
        Ok(path) => path,
        Err(e) => {
            reach_test::skip("proot: an arm64 root under qemu", &e.to_string());
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    reach_test::docker::busybox_rootfs_with(dir.path(), &busybox).unwrap();
    let destination = Destination::parse(&format!("proot://{}", dir.path().display())).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(
        ProotBackend::new(
            destination.clone(),
            ProotOptions {
                qemu: Some(QEMU.to_owned()),
                ..ProotOptions::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(backend.platform().await.unwrap().arch, "aarch64");

    let out = backend
        .exec(ExecSpec::shell("uname -m; echo to-stderr >&2; exit 3"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "aarch64\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    assert_eq!(out.status, ExitStatus::Code(3));

    let out = backend
        .exec(ExecSpec::argv(["uname", "-m"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "aarch64\n");
    assert!(out.status.success(), "{:?}", out.status);

    // A death by signal under the emulator is still the command's own.
    let out = backend
        .exec(ExecSpec::shell("sh -c 'exit 0'; kill -TERM $$"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Signal {
            signal: Signal::TERM,
            core_dumped: false
        },
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Files are the host's, whatever the architecture.
    let fs = backend.fs().await.unwrap();
    fs.write("/tmp/note", b"arm64").await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("tmp/note")).unwrap(),
        b"arm64"
    );

    // Without the emulator the root's programs cannot run here: an error that says why and
    // names the option, not a bare exit status.
    let bare = ProotBackend::new(destination, ProotOptions::default()).unwrap();
    let result = match bare.exec(ExecSpec::argv(["uname", "-m"])).await {
        Err(e) => Err(e),
        Ok(process) => process.output().await.map(|out| out.status),
    };
    let err = result.expect_err("an arm64 program ran on this host without qemu");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("qemu"), "{err}");
}
