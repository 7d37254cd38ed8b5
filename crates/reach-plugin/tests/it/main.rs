//! reach-plugin against real processes: verified execution, the Python reference adapter
//! through the whole conformance suite, and adapters that die, lie or hang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod conformance;
mod sessions;
mod verified;
