//! `ssh -L` through the gateway: a `direct-tcpip` channel becomes a TCP connection made by the
//! connection's backend (this host, or the connection's or user's container, whose own
//! loopback and unpublished ports it reaches), spliced to the channel.

use std::sync::Arc;
use std::time::Instant;

use reach_core::{tcp_address, ErrorKind};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use crate::conn::Conn;
use crate::log::Level;

/// What the client asked to be connected to.
pub(crate) struct Request {
    pub host: String,
    pub port: u32,
    /// The client's own end, as it reported it (for the log).
    pub origin: String,
}

/// Answers a `direct-tcpip` channel, then carries it to its end.
pub(crate) async fn direct_tcpip(
    channel: Channel<Msg>,
    conn: Arc<Conn>,
    request: Request,
    reply: ChannelOpenHandle,
) {
    let target = tcp_address(&request.host, u16::try_from(request.port).unwrap_or(0));
    let refuse = |why: &str| {
        crate::log!(
            Level::Warn,
            conn.id(),
            "forward.refused",
            to = target,
            origin = request.origin,
            why = why
        );
    };
    if let Some(why) = conn.forwarding_refused() {
        refuse(why);
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    }
    let Some(port) = u16::try_from(request.port).ok().filter(|p| *p > 0) else {
        refuse("not a TCP port");
        reply.reject(ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    let metrics = conn.metrics();
    let place = match conn.backend(channel.id()).await {
        Ok(place) => place,
        Err(e) => {
            metrics.backend("forward", false);
            refuse(&e.to_string());
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let tunnel = match place.backend.connect_tcp(&request.host, port).await {
        Ok(tunnel) => tunnel,
        Err(e) => {
            metrics.backend("forward", false);
            refuse(&e.to_string());
            let reason = match e.kind() {
                ErrorKind::PermissionDenied | ErrorKind::Unsupported => {
                    ChannelOpenFailure::AdministrativelyProhibited
                }
                _ => ChannelOpenFailure::ConnectFailed,
            };
            reply.reject(reason).await;
            return;
        }
    };
    metrics.backend("forward", true);
    reply.accept().await;
    crate::log!(
        Level::Info,
        conn.id(),
        "forward.opened",
        to = target,
        origin = request.origin
    );
    let started = Instant::now();
    let (from_client, to_client) = tokio::io::split(channel.into_stream());
    let carried = tunnel.splice(from_client, to_client).await;
    let took_ms = started.elapsed().as_millis();
    match carried {
        Ok((up, down)) => crate::log!(
            Level::Info,
            conn.id(),
            "forward.closed",
            to = target,
            sent = up,
            received = down,
            took_ms = took_ms
        ),
        Err(e) => crate::log!(
            Level::Info,
            conn.id(),
            "forward.closed",
            to = target,
            error = e,
            took_ms = took_ms
        ),
    }
}
