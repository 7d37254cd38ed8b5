//! The gateway's metrics, kept by `prometheus-client` and served in the OpenMetrics text
//! format at `/metrics` by a hyper HTTP/1.1 server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use reach_core::{Error, Result};
use tokio::net::TcpListener;

/// Authentication methods, as labelled in `reach_gateway_auth_failures_total`.
pub const AUTH_METHODS: [&str; 4] = ["publickey", "password", "webhook", "rate_limit"];
/// Backend operations, as labelled in the backend request counters.
pub const BACKEND_OPS: [&str; 5] = ["exec", "shell", "sftp", "container", "forward"];
/// Container lifecycle phases, as labelled in `reach_gateway_container_seconds`.
pub const PHASES: [&str; 3] = ["create", "start", "remove"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// Buckets from 5 ms to about 40 s: a local session starts in milliseconds, a container
/// in a second or so, a pull-less create in tens of milliseconds.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The label in `names` equal to `name` (the first one for an unknown name).
fn known(names: &[&'static str], name: &str) -> &'static str {
    names
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or(names[0])
}

/// Everything the gateway counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Counter,
    connections_active: Gauge,
    auth_successes: Counter,
    auth_failures: Family<MethodLabel, Counter>,
    sessions: Counter,
    sessions_active: Gauge,
    session_setup: Histogram,
    backend_requests: Family<OpLabel, Counter>,
    backend_failures: Family<OpLabel, Counter>,
    container_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    containers_reaped: Counter,
    bytes: Family<DirectionLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, each labelled one at zero, so that scrapes see them all
    /// from the start.
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            connections: Counter::default(),
            connections_active: Gauge::default(),
            auth_successes: Counter::default(),
            auth_failures: Family::default(),
            sessions: Counter::default(),
            sessions_active: Gauge::default(),
            session_setup: seconds(),
            backend_requests: Family::default(),
            backend_failures: Family::default(),
            container_seconds: Family::new_with_constructor(seconds),
            containers_reaped: Counter::default(),
            bytes: Family::default(),
        };
        for method in AUTH_METHODS {
            let _ = metrics.auth_failures.get_or_create(&MethodLabel { method });
        }
        for op in BACKEND_OPS {
            let _ = metrics.backend_requests.get_or_create(&OpLabel { op });
            let _ = metrics.backend_failures.get_or_create(&OpLabel { op });
        }
        for phase in PHASES {
            let _ = metrics
                .container_seconds
                .get_or_create(&PhaseLabel { phase });
        }
        for direction in ["in", "out"] {
            let _ = metrics.bytes.get_or_create(&DirectionLabel { direction });
        }
        metrics.registered()
    }

    fn registered(mut self) -> Metrics {
        // OpenMetrics adds `_total` to counters' names.
        let r = &mut self.registry;
        r.register(
            "reach_gateway_connections",
            "SSH connections accepted",
            self.connections.clone(),
        );
        r.register(
            "reach_gateway_connections_active",
            "SSH connections open",
            self.connections_active.clone(),
        );
        r.register(
            "reach_gateway_auth_successes",
            "Successful logins",
            self.auth_successes.clone(),
        );
        r.register(
            "reach_gateway_auth_failures",
            "Failed authentication attempts, by method",
            self.auth_failures.clone(),
        );
        r.register(
            "reach_gateway_sessions",
            "Channels that ran a command, shell or subsystem",
            self.sessions.clone(),
        );
        r.register(
            "reach_gateway_sessions_active",
            "Channels running now",
            self.sessions_active.clone(),
        );
        r.register(
            "reach_gateway_session_setup_seconds",
            "From a channel's exec, shell or subsystem request to its command running",
            self.session_setup.clone(),
        );
        r.register(
            "reach_gateway_backend_requests",
            "Requests to the backend, by operation",
            self.backend_requests.clone(),
        );
        r.register(
            "reach_gateway_backend_failures",
            "Backend requests that failed, by operation",
            self.backend_failures.clone(),
        );
        r.register(
            "reach_gateway_container_seconds",
            "Time spent creating, starting and removing containers",
            self.container_seconds.clone(),
        );
        r.register(
            "reach_gateway_containers_reaped",
            "Containers left by an earlier run and removed at start",
            self.containers_reaped.clone(),
        );
        r.register(
            "reach_gateway_bytes",
            "Payload bytes, by direction (in: from clients)",
            self.bytes.clone(),
        );
        self
    }

    /// A connection was accepted (and is open until [`Metrics::connection_closed`]).
    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_active.inc();
    }

    /// A connection counted by [`Metrics::connection_opened`] ended.
    pub fn connection_closed(&self) {
        self.connections_active.dec();
    }

    /// A connection was accepted and then dropped at once (rate limit): counted, never open.
    pub fn connection_dropped(&self) {
        self.connections.inc();
    }

    /// Counts a successful login.
    pub fn auth_succeeded(&self) {
        self.auth_successes.inc();
    }

    /// Counts a failed authentication by `method` (one of [`AUTH_METHODS`]).
    pub fn auth_failed(&self, method: &str) {
        let method = known(&AUTH_METHODS, method);
        self.auth_failures
            .get_or_create(&MethodLabel { method })
            .inc();
    }

    /// A channel started running something, `setup` after it asked.
    pub fn session_started(&self, setup: Duration) {
        self.sessions.inc();
        self.sessions_active.inc();
        self.session_setup.observe(setup.as_secs_f64());
    }

    /// A channel counted by [`Metrics::session_started`] ended.
    pub fn session_ended(&self) {
        self.sessions_active.dec();
    }

    /// Counts a backend request (one of [`BACKEND_OPS`]) and whether it failed.
    pub fn backend(&self, op: &str, ok: bool) {
        let op = known(&BACKEND_OPS, op);
        self.backend_requests.get_or_create(&OpLabel { op }).inc();
        if !ok {
            self.backend_failures.get_or_create(&OpLabel { op }).inc();
        }
    }

    /// Records how long a container lifecycle `phase` (one of [`PHASES`]) took.
    pub fn container_phase(&self, phase: &str, took: Duration) {
        let phase = known(&PHASES, phase);
        self.container_seconds
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }

    /// Counts containers the reaper removed.
    pub fn containers_reaped(&self, count: u64) {
        self.containers_reaped.inc_by(count);
    }

    /// Counts payload bytes from clients (stdin, SFTP writes).
    pub fn bytes_in(&self, count: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(count);
    }

    /// Counts payload bytes to clients (stdout, stderr, SFTP reads).
    pub fn bytes_out(&self, count: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(count);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (status, body, kind) = if request.uri().path() == "/metrics" {
        (StatusCode::OK, metrics.render(), CONTENT_TYPE)
    } else {
        (
            StatusCode::NOT_FOUND,
            "try /metrics\n".to_owned(),
            "text/plain",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Serves `GET /metrics` on `addr` until the task is dropped; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening for metrics on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("reading the metrics address", e))?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| answer(request, metrics.clone()));
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service);
                // A scraper that goes away mid-request is no concern of the gateway's.
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    #[tokio::test]
    async fn the_endpoint_answers_http_1_1_and_keeps_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new());
        metrics.connection_opened();
        let (addr, task) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Two requests on one connection, the second asking to close it.
        stream
            .write_all(
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("application/openmetrics-text"), "{text}");
        assert!(text.contains("reach_gateway_connections_total 1"), "{text}");
        assert!(text.contains("HTTP/1.1 404 Not Found"), "{text}");
        task.abort();
    }

    #[test]
    fn the_series_keep_their_names_and_histograms_count() {
        let m = Metrics::new();
        m.connection_opened();
        m.auth_failed("password");
        m.auth_failed("nonsense");
        m.backend("forward", false);
        m.session_started(Duration::from_millis(30));
        m.container_phase("start", Duration::from_millis(700));
        m.bytes_in(5);
        let text = m.render();
        let v = |series: &str| value(&text, series);
        assert_eq!(v("reach_gateway_connections_total"), Some(1.0), "{text}");
        assert_eq!(v("reach_gateway_connections_active"), Some(1.0));
        assert_eq!(
            v("reach_gateway_auth_failures_total{method=\"password\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("reach_gateway_auth_failures_total{method=\"publickey\"}"),
            Some(1.0),
            "an unknown method counts as the first"
        );
        assert_eq!(
            v("reach_gateway_backend_failures_total{op=\"exec\"}"),
            Some(0.0)
        );
        assert_eq!(
            v("reach_gateway_backend_failures_total{op=\"forward\"}"),
            Some(1.0)
        );
        assert_eq!(v("reach_gateway_session_setup_seconds_count"), Some(1.0));
        assert_eq!(
            v("reach_gateway_container_seconds_count{phase=\"start\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("reach_gateway_container_seconds_bucket{le=\"1.28\",phase=\"start\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(v("reach_gateway_bytes_total{direction=\"in\"}"), Some(5.0));
        assert!(text.ends_with("# EOF\n"));
    }
}
