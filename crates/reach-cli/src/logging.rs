//! Diagnostics on stderr: the libraries' `tracing` events, turned on by `-v` (what happens:
//! connection phases, host key checks, authentication), `-vv` (how: algorithms negotiated,
//! each method tried and why it was refused, agent decisions), `-vvv` (everything, russh's
//! own protocol messages included), or by `RUST_LOG` (`RUST_LOG=reach_ssh=debug`), which
//! takes precedence. `reach serve` always writes its events, as JSON lines; the connection
//! daemon always writes its own and the libraries' info events to its `daemon.log`.
//!
//! No secret is in any event at any level: passwords, passphrases and keys are never given
//! to `tracing`, and the protocol layers below log lengths and message numbers, not payloads.

use std::io::IsTerminal;

use tracing_subscriber::fmt::time::uptime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Which process is logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A command a user runs: quiet unless asked.
    Command,
    /// `reach serve`: the gateway's events, as JSON lines.
    Serve,
    /// The connection daemon: its life and its connections', as lines in its log file.
    Daemon,
}

/// What to log without `RUST_LOG`. Every reach crate's target starts with `reach`, and a
/// directive's target matches by prefix.
fn directives(verbose: u8, mode: Mode) -> String {
    let base = match mode {
        Mode::Command => "off",
        Mode::Serve => "reach_gateway=info",
        Mode::Daemon => "reach=info",
    };
    match verbose {
        0 => base.to_owned(),
        1 => format!("{base},reach=info"),
        2 => format!("{base},reach=debug,russh::client::kex=debug,russh::server::kex=debug"),
        _ => format!("{base},reach=trace,russh=debug,russh_sftp=info"),
    }
}

/// Installs the subscriber; `true` when a command's own logging is on (the caller then
/// connects directly, so the connection's story is told in this process).
pub fn init(verbose: u8, mode: Mode) -> bool {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let (filter, asked) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, true),
        Some(Err(err)) => {
            eprintln!("reach: ignoring RUST_LOG: {err}");
            (EnvFilter::new(directives(verbose, mode)), verbose > 0)
        }
        None => (EnvFilter::new(directives(verbose, mode)), verbose > 0),
    };
    if !asked && mode == Mode::Command {
        return false;
    }
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if mode == Mode::Serve {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr);
        registry.with(json).try_init()
    } else {
        let human = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(verbose >= 3 || from_env.is_some());
        if mode == Mode::Daemon {
            // A long-lived process's log: wall-clock times.
            registry.with(human).try_init()
        } else {
            registry.with(human.with_timer(uptime())).try_init()
        }
    };
    if let Err(err) = installed {
        eprintln!("reach: cannot turn logging on: {err}");
    }
    asked && mode == Mode::Command
}

#[cfg(test)]
mod tests {
    use super::{directives, Mode};

    #[test]
    fn each_v_says_more() {
        assert_eq!(directives(0, Mode::Command), "off");
        assert_eq!(directives(0, Mode::Serve), "reach_gateway=info");
        assert_eq!(directives(0, Mode::Daemon), "reach=info");
        assert!(directives(1, Mode::Command).contains("reach=info"));
        assert!(directives(2, Mode::Command).contains("russh::client::kex=debug"));
        assert!(directives(3, Mode::Serve).starts_with("reach_gateway=info,reach=trace"));
    }
}
