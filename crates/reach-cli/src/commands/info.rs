//! `reach info`: what a destination is and how fast it answers.

use std::time::Instant;

use reach::Destination;
use serde_json::json;

use crate::cli::InfoArgs;
use crate::output;

pub async fn info(args: InfoArgs, json: bool) -> reach::Result<i32> {
    let destination = Destination::parse(&args.destination)?;
    let started = Instant::now();
    let backend = super::connect(&destination).await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    let platform = backend.platform().await?;
    if json {
        output::print_json(&json!({
            "destination": destination.to_string(),
            "backend": backend.kind(),
            "address": backend.addr(),
            "user": backend.user(),
            "os": platform.os,
            "arch": platform.arch,
            "variant": platform.variant,
            "connect_ms": connect_ms,
        }));
    } else {
        println!("destination  {destination}");
        println!("backend      {}", backend.kind());
        println!("address      {}", backend.addr());
        println!("user         {}", backend.user());
        println!("platform     {platform}");
        println!("connect      {connect_ms:.2} ms");
    }
    Ok(0)
}
