//! `reach forward`: local TCP ports carried to addresses as a destination sees them
//! (`ssh -N -L` for every backend), until a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use reach::{tcp_address, Backend, Destination, Error, ErrorKind};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::cli::ForwardArgs;
use crate::output;

/// One `[BIND:]PORT:HOST:HOSTPORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The local address to listen on.
    pub bind: String,
    /// The local port (0: any free one).
    pub port: u16,
    /// The host to connect to, as the destination resolves it.
    pub host: String,
    /// Its port.
    pub host_port: u16,
}

/// Splits off the last `:`-separated field, which may be a bracketed IPv6 address.
fn split_last(spec: &str) -> Option<(&str, &str)> {
    if let Some(open) = spec.strip_suffix(']').and_then(|s| s.rfind('[')) {
        let field = &spec[open + 1..spec.len() - 1];
        let rest = spec[..open].strip_suffix(':')?;
        return Some((rest, field));
    }
    match spec.rfind(':') {
        Some(colon) => Some((&spec[..colon], &spec[colon + 1..])),
        None => Some(("", spec)),
    }
}

/// Parses `[BIND:]PORT:HOST:HOSTPORT` (IPv6 addresses in brackets; BIND `*` is every
/// address).
pub fn parse_forward(spec: &str) -> reach::Result<Forward> {
    let invalid = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "`{spec}` is not a forward: {why} (write `[BIND:]PORT:HOST:HOSTPORT`, e.g. \
                 `8080:127.0.0.1:80` or `0.0.0.0:5432:db:5432`)"
            ),
        )
    };
    let port_of = |text: &str, what: &str| {
        text.parse::<u16>()
            .map_err(|_| invalid(&format!("{what} `{text}` is not a port number")))
    };
    let (rest, host_port) = spec
        .rsplit_once(':')
        .ok_or_else(|| invalid("it has no `:`"))?;
    let host_port = port_of(host_port, "HOSTPORT")?;
    if host_port == 0 {
        return Err(invalid("HOSTPORT 0 is no port to connect to"));
    }
    let (rest, host) = split_last(rest).ok_or_else(|| invalid("HOST is malformed"))?;
    if host.is_empty() || rest.is_empty() {
        return Err(invalid("PORT and HOST are both needed"));
    }
    let (bind, port) = split_last(rest).ok_or_else(|| invalid("BIND is malformed"))?;
    let port = port_of(port, "PORT")?;
    let bind = bind
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or(bind);
    let bind = match bind {
        "" | "localhost" => "127.0.0.1",
        "*" => "0.0.0.0",
        other => other,
    };
    Ok(Forward {
        bind: bind.to_owned(),
        port,
        host: host.to_owned(),
        host_port,
    })
}

pub async fn forward(args: ForwardArgs, json: bool) -> reach::Result<i32> {
    let destination = Destination::parse(&args.destination)?;
    let specs = if args.forwards.is_empty() {
        super::backend_for(&destination)?.configured_forwards()
    } else {
        args.forwards.clone()
    };
    if specs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "nothing to forward for `{destination}`: give `[BIND:]PORT:HOST:HOSTPORT` \
                 (e.g. `8080:127.0.0.1:80`), or LocalForward lines in the SSH config for an \
                 SSH destination"
            ),
        ));
    }
    let forwards = specs
        .iter()
        .map(|spec| parse_forward(spec))
        .collect::<reach::Result<Vec<_>>>()?;
    let backend = super::connect(&destination).await?;
    // Every port is bound before any is served: one in use fails the command at once.
    let mut listeners = Vec::new();
    for forward in forwards {
        let listener = TcpListener::bind((forward.bind.as_str(), forward.port))
            .await
            .map_err(|e| {
                let kind = match e.kind() {
                    std::io::ErrorKind::AddrInUse => ErrorKind::AlreadyExists,
                    std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                    _ => ErrorKind::InvalidInput,
                };
                Error::new(
                    kind,
                    format!(
                        "cannot listen on {}: {e}",
                        tcp_address(&forward.bind, forward.port)
                    ),
                )
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("read the listening address", e))?;
        let to = tcp_address(&forward.host, forward.host_port);
        if json {
            output::print_json(&json!({
                "listening": local.to_string(),
                "to": to,
                "destination": destination.to_string(),
            }));
        } else {
            eprintln!("reach: forwarding {local} to {to} on {destination}");
        }
        listeners.push((listener, forward, local));
    }
    let mut served = tokio::task::JoinSet::new();
    for (listener, forward, local) in listeners {
        served.spawn(serve(listener, backend.clone(), forward, local));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(Ok(Err(e))) = served.join_next() => return Err(e),
    }
    Ok(0)
}

/// Accepts connections on `listener` and carries each through the destination.
async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    forward: Forward,
    local: SocketAddr,
) -> reach::Result<()> {
    let forward = Arc::new(forward);
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: this connection is lost, the port stays.
            Err(e) => {
                eprintln!("reach: accepting on {local}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (backend, forward) = (backend.clone(), forward.clone());
        tokio::spawn(async move {
            if let Err(e) = carry(backend.as_ref(), client, &forward).await {
                eprintln!(
                    "reach: {peer} → {local} → {} on {}: {e}",
                    tcp_address(&forward.host, forward.host_port),
                    backend.destination()
                );
            }
        });
    }
}

/// Relays one connection both ways; each side's end of stream is passed on, so a peer
/// that answers after the client has finished sending still gets its answer through.
async fn carry(backend: &dyn Backend, client: TcpStream, forward: &Forward) -> reach::Result<()> {
    let _ = client.set_nodelay(true);
    let tunnel = backend
        .connect_tcp(&forward.host, forward.host_port)
        .await?;
    let (from_client, to_client) = client.into_split();
    tunnel
        .splice(from_client, to_client)
        .await
        .map(drop)
        .map_err(|e| Error::io("carry the connection", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(bind: &str, port: u16, host: &str, host_port: u16) -> Forward {
        Forward {
            bind: bind.to_owned(),
            port,
            host: host.to_owned(),
            host_port,
        }
    }

    #[test]
    fn specs_parse_like_ssh_dash_l() {
        let cases = [
            (
                "8080:127.0.0.1:80",
                forward("127.0.0.1", 8080, "127.0.0.1", 80),
            ),
            ("0:db:5432", forward("127.0.0.1", 0, "db", 5432)),
            ("0.0.0.0:5432:db:5432", forward("0.0.0.0", 5432, "db", 5432)),
            ("*:22:h:22", forward("0.0.0.0", 22, "h", 22)),
            ("localhost:1:h:2", forward("127.0.0.1", 1, "h", 2)),
            ("[::1]:8080:[::1]:80", forward("::1", 8080, "::1", 80)),
            (
                "8080:[fe80::1]:80",
                forward("127.0.0.1", 8080, "fe80::1", 80),
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_forward(spec).expect(spec), want, "{spec}");
        }
    }

    #[test]
    fn bad_specs_say_what_to_write() {
        for spec in [
            "8080",
            "8080:80",
            "x:h:80",
            "8080:h:0",
            "8080:h:http",
            ":h:80",
            "1:[::1:2",
        ] {
            let err = parse_forward(spec).expect_err(spec);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{spec}");
            assert!(
                err.to_string().contains("[BIND:]PORT:HOST:HOSTPORT"),
                "{err}"
            );
        }
    }
}
