//! Output helpers: JSON values, errors, time formatting.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

/// Flushes stdout and stderr before the process exits.
pub fn flush_stdio() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Prints one JSON document on a line of its own.
pub fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
}

/// Reports a failed operation: always a line on stderr, and with `--json` an object on stdout.
pub fn report_error(err: &reach::Error, json: bool) {
    eprintln!("reach: {err}");
    if json {
        print_json(&json!({"error": {"kind": err.kind().as_str(), "message": err.to_string()}}));
    }
}

/// Adds `bytes` to `object` under `key` as a string when it is UTF-8, else as base64 under
/// `KEY_base64`.
pub fn put_bytes(object: &mut serde_json::Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(key.to_owned(), Value::String(text.to_owned()));
        }
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            object.insert(format!("{key}_base64"), Value::String(encoded));
        }
    }
}

/// Seconds since the Unix epoch, if `time` is after it.
pub fn unix_seconds(time: Option<SystemTime>) -> Option<i64> {
    time.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// `drwxr-xr-x` style text for a type and mode.
pub fn mode_string(file_type: reach::FileType, mode: u32) -> String {
    let kind = match file_type {
        reach::FileType::Dir => 'd',
        reach::FileType::Symlink => 'l',
        reach::FileType::File => '-',
        reach::FileType::Other => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, special_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => special_char,
            (false, true) => special_char.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_utc(1_795_239_749), "2026-11-21 05:42");
    }

    #[test]
    fn modes() {
        assert_eq!(mode_string(reach::FileType::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(reach::FileType::File, 0o4711), "-rws--x--x");
        assert_eq!(mode_string(reach::FileType::File, 0o1644), "-rw-r--r-T");
    }
}
