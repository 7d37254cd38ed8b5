//! Counters in Prometheus' text format, served over plain HTTP at `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reach_core::sync::lock;
use reach_core::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Authentication methods, as labelled in `reach_gateway_auth_failures_total`.
pub const AUTH_METHODS: [&str; 4] = ["publickey", "password", "webhook", "rate_limit"];
/// Backend operations, as labelled in the backend request counters.
pub const BACKEND_OPS: [&str; 5] = ["exec", "shell", "sftp", "container", "forward"];
/// Container lifecycle phases, as labelled in `reach_gateway_container_seconds`.
pub const PHASES: [&str; 3] = ["create", "start", "remove"];

/// Everything the gateway counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// Successful logins.
    pub auth_successes: AtomicU64,
    auth_failures: [AtomicU64; 4],
    /// Channels that ran something (exec, shell, subsystem).
    pub sessions_total: AtomicU64,
    /// Such channels running now.
    pub sessions_active: AtomicU64,
    backend_requests: [AtomicU64; 5],
    backend_failures: [AtomicU64; 5],
    container_seconds: Mutex<[(f64, u64); 3]>,
    /// Containers removed by the reaper at start.
    pub containers_reaped: AtomicU64,
    /// Bytes from clients (stdin, SFTP writes).
    pub bytes_in: AtomicU64,
    /// Bytes to clients (stdout, stderr, SFTP reads).
    pub bytes_out: AtomicU64,
}

fn index(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or(0)
}

impl Metrics {
    /// Counts a failed authentication by `method` (one of [`AUTH_METHODS`]).
    pub fn auth_failed(&self, method: &str) {
        self.auth_failures[index(&AUTH_METHODS, method)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a backend request (one of [`BACKEND_OPS`]) and whether it failed.
    pub fn backend(&self, op: &str, ok: bool) {
        let i = index(&BACKEND_OPS, op);
        self.backend_requests[i].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.backend_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records how long a container lifecycle `phase` (one of [`PHASES`]) took.
    pub fn container_phase(&self, phase: &str, took: Duration) {
        let mut sums = lock(&self.container_seconds);
        let slot = &mut sums[index(&PHASES, phase)];
        slot.0 += took.as_secs_f64();
        slot.1 += 1;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in rows {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let plain = |v: u64| vec![(String::new(), v.to_string())];
        metric(
            "reach_gateway_connections_total",
            "counter",
            "SSH connections accepted.",
            plain(get(&self.connections_total)),
        );
        metric(
            "reach_gateway_connections_active",
            "gauge",
            "SSH connections open.",
            plain(get(&self.connections_active)),
        );
        metric(
            "reach_gateway_auth_successes_total",
            "counter",
            "Successful logins.",
            plain(get(&self.auth_successes)),
        );
        metric(
            "reach_gateway_auth_failures_total",
            "counter",
            "Failed authentication attempts, by method.",
            labelled("method", &AUTH_METHODS, &self.auth_failures),
        );
        metric(
            "reach_gateway_sessions_total",
            "counter",
            "Channels that ran a command, shell or subsystem.",
            plain(get(&self.sessions_total)),
        );
        metric(
            "reach_gateway_sessions_active",
            "gauge",
            "Channels running now.",
            plain(get(&self.sessions_active)),
        );
        metric(
            "reach_gateway_backend_requests_total",
            "counter",
            "Requests to the backend, by operation.",
            labelled("op", &BACKEND_OPS, &self.backend_requests),
        );
        metric(
            "reach_gateway_backend_failures_total",
            "counter",
            "Backend requests that failed, by operation.",
            labelled("op", &BACKEND_OPS, &self.backend_failures),
        );
        let sums = *lock(&self.container_seconds);
        let mut rows = Vec::new();
        for (phase, (sum, count)) in PHASES.iter().zip(sums) {
            rows.push((format!("_sum{{phase=\"{phase}\"}}"), format!("{sum:.6}")));
            rows.push((format!("_count{{phase=\"{phase}\"}}"), count.to_string()));
        }
        metric(
            "reach_gateway_container_seconds",
            "summary",
            "Time spent creating, starting and removing containers.",
            rows,
        );
        metric(
            "reach_gateway_containers_reaped_total",
            "counter",
            "Containers left by an earlier run and removed at start.",
            plain(get(&self.containers_reaped)),
        );
        metric(
            "reach_gateway_bytes_total",
            "counter",
            "Payload bytes, by direction (in: from clients).",
            vec![
                (
                    "{direction=\"in\"}".to_owned(),
                    get(&self.bytes_in).to_string(),
                ),
                (
                    "{direction=\"out\"}".to_owned(),
                    get(&self.bytes_out).to_string(),
                ),
            ],
        );
        out
    }
}

fn labelled(label: &str, names: &[&str], values: &[AtomicU64]) -> Vec<(String, String)> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            (
                format!("{{{label}=\"{n}\"}}"),
                v.load(Ordering::Relaxed).to_string(),
            )
        })
        .collect()
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
        while let Ok((mut stream, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", "try /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((bound, task))
}
