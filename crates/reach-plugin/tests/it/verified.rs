//! Verified execution against real files, real renames and real processes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use reach_core::ErrorKind;
use reach_plugin::{hex, parse_digest, Trust, VerifiedProgram};
use sha2::{Digest, Sha256};

fn script(path: &Path, says: &str) -> [u8; 32] {
    let text = format!("#!/bin/sh\necho {says}\n");
    std::fs::write(path, &text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Sha256::digest(text.as_bytes()).into()
}

async fn run(program: &VerifiedProgram) -> String {
    let out = program.command().unwrap().output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_pinned_adapter_runs_and_a_mismatch_is_refused_naming_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reach-backend-test");
    let digest = script(&path, "pinned");
    let program = VerifiedProgram::open(&path, Trust::Pinned(digest)).unwrap();
    assert_eq!(program.digest(), digest);
    assert_eq!(run(&program).await, "pinned\n");

    let other = [7u8; 32];
    let err = VerifiedProgram::open(&path, Trust::Pinned(other)).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PermissionDenied), "{err}");
    assert!(err.message().contains(&hex(&digest)), "{err}");
    assert!(err.message().contains(&hex(&other)), "{err}");
    assert!(err.message().contains("reach-backend-test"), "{err}");

    let unpinned = VerifiedProgram::open(&path, Trust::Unpinned).unwrap();
    assert_eq!(run(&unpinned).await, "pinned\n");
}

/// The checked bytes run, whatever happens to the path or the file afterwards.
#[tokio::test]
async fn what_runs_is_what_was_checked_after_a_rename_or_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter");
    let digest = script(&path, "good");
    let program = VerifiedProgram::open(&path, Trust::Pinned(digest)).unwrap();
    // Replaced by a rename ...
    let evil = dir.path().join("evil");
    script(&evil, "evil");
    std::fs::rename(&evil, &path).unwrap();
    assert_eq!(run(&program).await, "good\n");
    // ... and rewritten in place.
    std::fs::write(&path, "#!/bin/sh\necho rewritten\n").unwrap();
    assert_eq!(run(&program).await, "good\n");
    // A binary works as well as a script.
    let true_path = dir.path().join("true");
    std::fs::copy("/bin/true", &true_path).unwrap();
    let program = VerifiedProgram::open(&true_path, Trust::Unpinned).unwrap();
    assert!(program.command().unwrap().status().await.unwrap().success());
}

/// A thread swaps the path between the pinned adapter and another, as fast as it can, while
/// adapters are checked and run: each run either was refused or printed the pinned bytes'
/// output, never the other's.
#[tokio::test]
async fn a_file_swapped_by_renames_during_checks_never_runs_the_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter");
    let good = dir.path().join("good");
    let evil = dir.path().join("evil");
    let digest = script(&good, "good");
    script(&evil, "evil");
    std::fs::copy(&good, &path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (path, good, evil) = (path.clone(), good.clone(), evil.clone());
        std::thread::spawn(move || {
            let staging = path.with_extension("next");
            while !stop.load(Ordering::Relaxed) {
                let n = swaps.load(Ordering::Relaxed);
                let from = if n.is_multiple_of(2) { &evil } else { &good };
                std::fs::copy(from, &staging).unwrap();
                std::fs::rename(&staging, &path).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut ran, mut refused) = (0, 0);
    // Until the path has changed hands a few hundred times (and both outcomes were seen).
    for _ in 0..20_000 {
        if swaps.load(Ordering::Relaxed) >= 300 && ran > 0 && refused > 0 {
            break;
        }
        match VerifiedProgram::open(&path, Trust::Pinned(digest)) {
            Ok(program) => {
                assert_eq!(run(&program).await, "good\n");
                ran += 1;
            }
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::PermissionDenied), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    println!("{ran} ran, {refused} refused, {swaps} swaps");
    assert!(swaps >= 300, "the race was not run: {swaps} swaps");
    assert!(
        ran > 0 && refused > 0,
        "{ran} ran, {refused} refused: both sides of the race must be seen"
    );
}

#[test]
fn pins_parse_from_hex_and_bad_ones_are_named() {
    let digest = [0xab; 32];
    assert_eq!(parse_digest(&hex(&digest)).unwrap(), digest);
    assert_eq!(
        parse_digest(&format!("sha256:{}", hex(&digest))).unwrap(),
        digest
    );
    let err = parse_digest("abc").unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidInput));
    assert!(err.message().contains("`abc`"), "{err}");
    assert!(parse_digest(&"zz".repeat(32)).is_err());
}
