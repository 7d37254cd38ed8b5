//! `reach info`: what a destination is, what it can do and how fast it answers.

use std::time::Instant;

use reach::{Capabilities, Capability, Destination};
use serde_json::{json, Map, Value};

use crate::cli::InfoArgs;
use crate::output;

pub async fn info(args: InfoArgs, json: bool) -> reach::Result<i32> {
    let destination = Destination::parse(&args.destination)?;
    let started = Instant::now();
    let backend = super::connect(&destination).await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    let platform = backend.platform().await?;
    let capabilities = backend
        .capabilities()
        .union(backend.fs().await?.capabilities());
    if json {
        output::print_json(&json!({
            "destination": destination.to_string(),
            "backend": backend.kind().as_str(),
            "address": backend.addr(),
            "user": backend.user(),
            "os": platform.os,
            "arch": platform.arch,
            "variant": platform.variant,
            "connect_ms": connect_ms,
            "capabilities": capabilities_json(capabilities),
        }));
    } else {
        println!("destination  {destination}");
        println!("backend      {}", backend.kind());
        println!("address      {}", backend.addr());
        println!("user         {}", backend.user());
        println!("platform     {platform}");
        println!("connect      {connect_ms:.2} ms");
        let names: Vec<&str> = capabilities.iter().map(Capability::as_str).collect();
        println!("capabilities {}", names.join(" "));
    }
    Ok(0)
}

/// Every capability by name, `true` where the target has it, so that a script can tell an
/// absent capability from one this version of reach does not know.
fn capabilities_json(capabilities: Capabilities) -> Value {
    let entries: Map<String, Value> = Capability::ALL
        .into_iter()
        .map(|c| (c.as_str().to_owned(), Value::Bool(capabilities.has(c))))
        .collect();
    Value::Object(entries)
}
