//! Plugin backends for reach: an external program (an adapter, `reach-backend-<scheme>`) that
//! speaks reach's protocol on stdin/stdout becomes a target, run only when its SHA-256
//! matches the pin the user recorded.
//!
//! - where an adapter comes from and whether it may run ([`resolve()`], [`PluginSettings`],
//!   [`write_pin`]);
//! - running exactly the bytes that were checked ([`VerifiedProgram`]);
//! - asking an adapter what it is ([`probe()`]);
//! - the session protocol (docs/PLUGINS.md) and the backend on it ([`PluginBackend`]).
#![deny(missing_docs)]

mod backend;
mod config;
mod files;
mod input;
mod pipe;
mod probe;
mod process;
mod resolve;
mod session;
mod verified;
mod wire;

pub use backend::{PluginBackend, PluginOptions};
pub use config::{check_scheme, user_config_path, write_pin, AdapterConfig, PluginSettings};
pub use probe::{parse as parse_capabilities, probe, AdapterInfo, PROTOCOL};
pub use resolve::{adapter_name, all, find, may_run, resolve, search_path, Adapter, Source};
pub use verified::{hex, parse_digest, Trust, VerifiedProgram};
