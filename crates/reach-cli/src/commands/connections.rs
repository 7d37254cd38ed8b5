//! `reach connections`: what the connection daemon holds, and closing it.

use reach::{Destination, Error, ErrorKind};
use serde_json::{json, Value};

use crate::cli::{ConnectionsAction, ConnectionsArgs};
use crate::output;
use crate::warm::{client, daemon, Request};

pub async fn connections(args: ConnectionsArgs, json: bool) -> reach::Result<i32> {
    let request = match args.action.unwrap_or(ConnectionsAction::List) {
        ConnectionsAction::Daemon { idle } => return daemon::serve(idle).await,
        ConnectionsAction::List => Request::List,
        ConnectionsAction::Stop => Request::Stop,
        ConnectionsAction::Close { destinations, all } => {
            if destinations.is_empty() != all {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "name the destinations to close, or --all (not both)",
                ));
            }
            let destinations = destinations
                .iter()
                .map(|d| Destination::parse(d).map(|d| d.to_string()))
                .collect::<reach::Result<Vec<_>>>()?;
            Request::Close { destinations }
        }
    };
    let reply = client::ask(&request).await?;
    if json {
        output::print_json(&reply.unwrap_or_else(|| json!({"running": false, "connections": []})));
        return Ok(0);
    }
    let Some(reply) = reply else {
        println!("no warm connections: the connection daemon is not running");
        return Ok(0);
    };
    match request {
        Request::List => print_list(&reply),
        Request::Close { .. } => {
            let closed = reply.get("closed").and_then(Value::as_u64).unwrap_or(0);
            println!(
                "closed {closed} connection{}",
                if closed == 1 { "" } else { "s" }
            );
        }
        _ => println!("the connection daemon stopped"),
    }
    Ok(0)
}

fn print_list(reply: &Value) {
    let empty = Vec::new();
    let rows = reply
        .get("connections")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let width = rows
        .iter()
        .map(|r| text(r, "destination").len())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    println!(
        "{:width$}  {:8}  {:>7}  {:>7}  {:>5}  {:>7}  STATE",
        "DESTINATION", "KEY", "AGE", "IDLE", "USES", "RUNNING"
    );
    for row in rows {
        let key = text(row, "key");
        let state = if row.get("connected").and_then(Value::as_bool) == Some(true) {
            "connected"
        } else {
            "closed"
        };
        println!(
            "{:width$}  {:8}  {:>7}  {:>7}  {:>5}  {:>7}  {state}",
            text(row, "destination"),
            key.get(..8).unwrap_or(&key),
            seconds(number(row, "age_s")),
            seconds(number(row, "idle_s")),
            number(row, "uses"),
            number(row, "running"),
        );
    }
    let idle = reply
        .get("idle_timeout_s")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    println!(
        "daemon pid {}, closes connections unused for {}",
        number(reply, "pid"),
        seconds(idle.round() as u64)
    );
}

/// `42s`, `3m05s`, `2h10m`.
fn seconds(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
