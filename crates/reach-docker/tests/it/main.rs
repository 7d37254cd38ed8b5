//! reach-docker against the real Docker engine, in containers of images built on the spot
//! (`reach_test::docker`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
