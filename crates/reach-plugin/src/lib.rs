//! Plugin backends for reach: an external program (an adapter, `reach-backend-<scheme>`) that
//! speaks reach's protocol on stdin/stdout becomes a target, run only when its SHA-256
//! matches the pin the user recorded.
//!
//! Built so far: [`VerifiedProgram`], which checks an adapter's bytes and runs exactly those
//! bytes (no window between the check and the run). The protocol, resolution from
//! `reach.toml` and the backend itself are to come (issue 27).
#![deny(missing_docs)]

mod verified;

pub use verified::{hex, parse_digest, Trust, VerifiedProgram};
