//! reach-test's own tests: the conformance suite on the local backend, and the proof that
//! every check fails on a backend with the defect it names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use reach_local::LocalBackend;
use reach_test::broken::BrokenBackend;
use reach_test::conformance::{self, Ctx, CHECKS};
use reach_test::{Fixture, LocalFixture};

mod local {
    async fn fixture() -> Option<reach_test::LocalFixture> {
        Some(reach_test::LocalFixture::new().expect("local fixture"))
    }

    reach_test::conformance_suite!(fixture());
}

#[test]
fn the_macro_generates_every_check() {
    let listed: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
    assert_eq!(local::GENERATED_CHECKS, listed.as_slice());
}

/// Each check, against the local backend broken in the way the check is meant to catch,
/// must fail. Prints what each check saw, which is the "deliberately broken backend" run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_fails_on_a_broken_backend() {
    let mut passed_anyway = Vec::new();
    for (name, defect) in CHECKS {
        let broken = BrokenBackend::new(Arc::new(LocalBackend::new()), *defect);
        let fixture = LocalFixture::with_backend(Arc::new(broken)).unwrap();
        match conformance::run(name, &Ctx::new(&fixture)).await {
            Err(failure) => println!("{name} with {defect:?}: FAILED as it must: {failure}"),
            Ok(()) => passed_anyway.push(format!("{name} with {defect:?}")),
        }
        let _ = fixture.scratch();
    }
    assert!(
        passed_anyway.is_empty(),
        "checks that passed on a broken backend: {passed_anyway:?}"
    );
}
