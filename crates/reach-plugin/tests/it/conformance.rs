//! The whole conformance suite, unchanged, on the Python reference adapter.

use crate::common::{demo_fixture, Dirs};
use reach_test::PeerFixture;

async fn fixture() -> Option<PeerFixture<Dirs>> {
    demo_fixture("reach-plugin conformance")
}

reach_test::conformance_suite!(fixture());
