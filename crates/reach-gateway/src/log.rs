//! Structured logs: one JSON object per line on stderr, each naming its connection, so that
//! `jq 'select(.conn=="c17")'` tells one client's story. Secrets never reach this module.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something refused or failed that the operator may want to know.
    Warn,
    /// The gateway could not do its job.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one event: `conn` is the connection id (empty for gateway-wide events), `event`
/// a dotted name (`auth.refused`), `fields` extra key/values.
pub fn event(level: Level, conn: &str, event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut object = serde_json::Map::new();
    object.insert(
        "ts".into(),
        serde_json::json!((ts * 1000.0).round() / 1000.0),
    );
    object.insert("level".into(), level.as_str().into());
    if !conn.is_empty() {
        object.insert("conn".into(), conn.into());
    }
    object.insert("event".into(), event.into());
    for (key, value) in fields {
        object.insert((*key).into(), value.to_string().into());
    }
    let line = serde_json::Value::Object(object).to_string();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// `log!(Level::Info, conn, "event", key = value, ...)`.
#[macro_export]
#[doc(hidden)]
macro_rules! log {
    ($level:expr, $conn:expr, $event:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::log::event($level, $conn, $event, &[$((stringify!($key), &$value as &dyn std::fmt::Display)),*])
    };
}
