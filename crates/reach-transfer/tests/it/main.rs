//! The transfer engine through its library API. Copies between real backends are tested
//! end to end in `reach-cli/tests/it/cp.rs`; here a defect-injecting destination shows that
//! verification, not luck, keeps a corrupted copy out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reach_core::{Backend, ErrorKind};
use reach_local::LocalBackend;
use reach_test::broken::{BrokenBackend, Defect};
use reach_transfer::{CopyOptions, Endpoint, Transfer, Verified};

fn local() -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new())
}

/// A destination that loses the last byte of every write.
fn lossy() -> Arc<dyn Backend> {
    Arc::new(BrokenBackend::new(local(), Defect::TruncateWrites))
}

/// A directory with `src` (`len` bytes of `i % modulus`) and an old `dst`; returns both
/// paths and the source's bytes.
fn files(len: u32, modulus: u32) -> (tempfile::TempDir, String, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src").display().to_string();
    let dst = dir.path().join("dst").display().to_string();
    let data: Vec<u8> = (0..len).map(|i| (i % modulus) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::write(&dst, b"old\n").unwrap();
    (dir, src, dst, data)
}

fn setup() -> (tempfile::TempDir, String, String) {
    let (dir, src, dst, _) = files(100_000, 251);
    (dir, src, dst)
}

#[tokio::test]
async fn a_corrupted_write_is_an_error_and_the_destination_is_untouched() {
    let (dir, src, dst) = setup();
    let err = Transfer::new(CopyOptions::default())
        .copy(
            &[Endpoint::new(local(), &src)],
            &Endpoint::new(lossy(), &dst),
        )
        .await
        .expect_err("a copy that lost a byte was accepted");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.to_string().contains("does not match what was sent"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n");
    assert!(
        !dir.path().join(".dst.reach-part").exists(),
        "the part is removed"
    );
}

#[tokio::test]
async fn without_verification_the_same_defect_goes_unnoticed() {
    // The control for the test above: the defect is real, and only the check catches it.
    let (_dir, src, dst) = setup();
    let summary = Transfer::new(CopyOptions::default().verify(false))
        .copy(
            &[Endpoint::new(local(), &src)],
            &Endpoint::new(lossy(), &dst),
        )
        .await
        .unwrap();
    assert_eq!(summary.files.len(), 1);
    // The lossy writer finishes in the background; wait for it to settle.
    for _ in 0..100 {
        if std::fs::metadata(&dst).unwrap().len() == 99_999 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_ne!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
}

/// A source that loses the last byte of every file it reads, but whose own hash (computed
/// by the file system it wraps) covers the whole file: a remote target whose bytes are
/// damaged on the way here. Not `local`, so a large file from it is checked against the
/// source's hash rather than read back here.
fn damaging_source() -> Arc<dyn Backend> {
    Arc::new(BrokenBackend::new(local(), Defect::TruncateReads))
}

/// A 9 MiB source (above the size at which the source's own hash is used) and an old
/// destination.
fn large_setup() -> (tempfile::TempDir, String, String, Vec<u8>) {
    files(9 << 20, 253)
}

#[tokio::test]
async fn bytes_damaged_on_the_way_from_a_remote_source_fail_its_own_hash() {
    let (dir, src, dst, _) = large_setup();
    let err = Transfer::new(CopyOptions::default())
        .copy(
            &[Endpoint::new(damaging_source(), &src)],
            &Endpoint::new(local(), &dst),
        )
        .await
        .expect_err("a copy that lost a byte on the way was accepted");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.to_string().contains("do not match") && err.to_string().contains("on the source"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"old\n");
    assert!(
        !dir.path().join(".dst.reach-part").exists(),
        "the part is removed"
    );

    // The control: unchecked, the damaged bytes land.
    Transfer::new(CopyOptions::default().verify(false))
        .copy(
            &[Endpoint::new(damaging_source(), &src)],
            &Endpoint::new(local(), &dst),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), (9 << 20) - 1);
}

#[tokio::test]
async fn a_large_file_from_a_remote_source_is_checked_against_its_own_hash() {
    let (_dir, src, dst, data) = large_setup();
    let remote: Arc<dyn Backend> = Arc::new(BrokenBackend::new(local(), Defect::WrongArch));
    let summary = Transfer::new(CopyOptions::default())
        .copy(
            &[Endpoint::new(remote, &src)],
            &Endpoint::new(local(), &dst),
        )
        .await
        .unwrap();
    assert_eq!(summary.files.len(), 1);
    assert_eq!(summary.files[0].verified, Verified::SourceHash);
    assert_eq!(std::fs::read(&dst).unwrap(), data);

    // Between two local paths the copy is hashed by the destination, as before.
    let summary = Transfer::new(CopyOptions::default())
        .copy(
            &[Endpoint::new(local(), &src)],
            &Endpoint::new(local(), &dst),
        )
        .await
        .unwrap();
    assert_eq!(summary.files[0].verified, Verified::TargetHash);
}
