//! The whole conformance suite, unchanged, inside a busybox root file system under proot.

async fn fixture() -> Option<reach_test::PeerFixture<crate::RootDir>> {
    crate::fixture("reach-proot conformance")
}

reach_test::conformance_suite!(fixture());
