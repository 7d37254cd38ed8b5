//! `reach serve`: the SSH gateway, configured from a file and flags, run until a signal.

use std::io::BufRead;

use reach::{Error, ErrorKind};
use reach_gateway::config::{ContainerMode, SessionBackend};
use reach_gateway::{Config, Gateway};

use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> reach::Result<i32> {
    if args.hash_password {
        return hash_password();
    }
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_flags(&mut config, &args)?;
    let mut gateway = Gateway::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    tokio::select! {
        _ = gateway.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    gateway.shutdown().await;
    Ok(0)
}

fn apply_flags(config: &mut Config, args: &ServeArgs) -> reach::Result<()> {
    let invalid = |m: String| Error::new(ErrorKind::InvalidInput, m);
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(keys) = &args.authorized_keys {
        config.auth.authorized_keys = Some(keys.clone());
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = Some(dir.clone());
    }
    if let Some(backend) = &args.backend {
        config.backend.kind = match backend.as_str() {
            "local" => SessionBackend::Local,
            "docker" => SessionBackend::Docker,
            "plugin" => SessionBackend::Plugin,
            other => {
                return Err(invalid(format!(
                    "--backend {other}: choose `local`, `docker` or `plugin` (with \
                     `destination` under [backend])"
                )))
            }
        };
    }
    if let Some(image) = &args.image {
        config.backend.image = Some(image.clone());
        if args.backend.is_none() {
            config.backend.kind = SessionBackend::Docker;
        }
    }
    if let Some(mode) = &args.mode {
        config.backend.mode = match mode.as_str() {
            "connection" => ContainerMode::Connection,
            "session" => ContainerMode::Session,
            "persistent" => ContainerMode::Persistent,
            other => {
                return Err(invalid(format!(
                    "--mode {other}: choose `connection`, `session` or `persistent`"
                )))
            }
        };
    }
    if let Some(metrics) = args.metrics {
        config.metrics.listen = Some(metrics);
    }
    Ok(())
}

/// Reads one line (the password) from stdin and prints its argon2 hash.
fn hash_password() -> reach::Result<i32> {
    let mut line = reach::ssh::zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the password from stdin", e))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "no password on stdin (echo -n 'secret' | reach serve --hash-password)",
        ));
    }
    println!("{}", reach_gateway::auth::hash_password(password)?);
    Ok(0)
}
