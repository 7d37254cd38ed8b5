//! Errors as they cross between the daemon and its clients.

/// A failure as JSON `{kind, message, subject}` (`subject` is null when not said).
pub fn error_value(err: &reach::Error) -> serde_json::Value {
    serde_json::json!({
        "kind": err.kind().as_str(),
        "message": err.message(),
        "subject": err.subject().map(reach::Subject::as_str),
    })
}

/// [`error_value`] as bytes for a frame.
pub fn error_json(err: &reach::Error) -> Vec<u8> {
    error_value(err).to_string().into_bytes()
}

/// The failure a `{kind, message, subject}` object describes.
pub fn error_from_json(value: &serde_json::Value) -> reach::Error {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .and_then(reach::ErrorKind::from_name)
        .unwrap_or(reach::ErrorKind::Protocol);
    let message = value
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("the connection daemon sent a malformed error");
    let error = reach::Error::new(kind, message);
    match value
        .get("subject")
        .and_then(|s| s.as_str())
        .and_then(reach::Subject::from_name)
    {
        Some(subject) => error.with_subject(subject),
        None => error,
    }
}
