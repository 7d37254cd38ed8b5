//! Structured logs: every gateway event is a `tracing` event (target `reach_gateway`) with a
//! dotted `event` name (`auth.refused`), the `conn` id it belongs to (empty for
//! gateway-wide events) and key/value fields, so that `jq 'select(.conn=="c17")'` tells one
//! client's story. `reach serve` writes them as JSON lines through `tracing-subscriber`'s
//! JSON layer. Secrets never reach this module.

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

/// `log!(Level::Info, conn, "event", key = value, ...)`: one `tracing` event whose fields
/// are `conn`, `event` and each `key` (its value as `Display`).
#[macro_export]
#[doc(hidden)]
macro_rules! log {
    ($level:expr, $conn:expr, $event:expr $(, $key:ident = $value:expr)* $(,)?) => {
        match $level {
            $crate::log::Level::Info => ::tracing::info!(
                target: "reach_gateway", conn = %$conn, event = %$event $(, $key = %$value)*
            ),
            $crate::log::Level::Warn => ::tracing::warn!(
                target: "reach_gateway", conn = %$conn, event = %$event $(, $key = %$value)*
            ),
            $crate::log::Level::Error => ::tracing::error!(
                target: "reach_gateway", conn = %$conn, event = %$event $(, $key = %$value)*
            ),
        }
    };
}
