//! `/metrics` in Prometheus's text format, on `--metrics-listen`.
//!
//! A deliberately tiny HTTP/1.1 responder: one `GET` per connection, answered and closed.
//! It reads the same counters as the `eddy_catalog` views, so a scrape costs no more than a
//! `SELECT` on them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use eddy_common::ids::ObjectId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::engine::Engine;

/// Binds `addr` and serves `/metrics` until the engine goes away.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn(addr: SocketAddr, engine: Weak<Engine>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { continue };
            let Some(engine) = engine.upgrade() else { return };
            tokio::spawn(async move {
                // The request line and headers, up to the blank line (they may come in pieces).
                let mut buf = Vec::with_capacity(1024);
                let read_head = async {
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), read_head).await.is_err() {
                    return;
                }
                let request = String::from_utf8_lossy(&buf);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let response = if request.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                    let body = render(&engine).await;
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(())
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics as Prometheus text.
pub async fn render(engine: &Arc<Engine>) -> String {
    let name_of = |id: ObjectId| engine.catalog.get_by_id(id).map(|d| d.name.clone()).unwrap_or_else(|| id.to_string());
    let metrics = engine.runtime.metrics();
    let mut out = String::new();
    let status = engine.runtime.status().await.unwrap_or_default();
    let _ = writeln!(out, "# HELP eddy_committed_epoch The last committed epoch.\n# TYPE eddy_committed_epoch gauge");
    let _ = writeln!(out, "eddy_committed_epoch {}", status.committed_epoch);
    let _ = writeln!(out, "# HELP eddy_live_actors Actors taking part in epochs.\n# TYPE eddy_live_actors gauge");
    let _ = writeln!(out, "eddy_live_actors {}", status.live_actors);
    let _ = writeln!(out, "# HELP eddy_failed_jobs Jobs stopped by an error.\n# TYPE eddy_failed_jobs gauge");
    let _ = writeln!(out, "eddy_failed_jobs {}", status.failed_jobs.len());
    let (p50, p99, samples) = metrics.freshness();
    let _ = writeln!(
        out,
        "# HELP eddy_freshness_ms Time from reading a source row to its epoch's commit, recent epochs.\n# TYPE eddy_freshness_ms gauge"
    );
    let _ = writeln!(out, "eddy_freshness_ms{{quantile=\"0.5\"}} {p50}");
    let _ = writeln!(out, "eddy_freshness_ms{{quantile=\"0.99\"}} {p99}");
    let _ = writeln!(out, "eddy_freshness_samples {samples}");
    let _ = writeln!(
        out,
        "# HELP eddy_source_rows_total Rows read per source split.\n# TYPE eddy_source_rows_total counter"
    );
    for s in metrics.source_splits() {
        let _ = writeln!(
            out,
            "eddy_source_rows_total{{job=\"{}\",source=\"{}\",split=\"{}\"}} {}",
            label(&name_of(s.job)),
            label(&name_of(s.source)),
            s.actor,
            s.rows
        );
    }
    let _ = writeln!(
        out,
        "# HELP eddy_late_rows_total Rows dropped behind the watermark.\n# TYPE eddy_late_rows_total counter"
    );
    for (job, source, n) in metrics.late_rows() {
        let _ = writeln!(
            out,
            "eddy_late_rows_total{{job=\"{}\",source=\"{}\"}} {n}",
            label(&name_of(job)),
            label(&name_of(source))
        );
    }
    let _ = writeln!(out, "# HELP eddy_sink_rows_total Rows each sink received.\n# TYPE eddy_sink_rows_total counter");
    for (sink, n) in metrics.sink_rows() {
        let _ = writeln!(out, "eddy_sink_rows_total{{sink=\"{}\"}} {n}", label(&name_of(sink)));
    }
    let _ = writeln!(
        out,
        "# HELP eddy_operator_state_bytes In-memory operator state.\n# TYPE eddy_operator_state_bytes gauge"
    );
    for s in metrics.operator_state() {
        let _ = writeln!(
            out,
            "eddy_operator_state_bytes{{job=\"{}\",actor=\"{}\",operator=\"{}\"}} {}",
            label(&name_of(s.job)),
            s.actor,
            label(s.operator),
            s.bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP eddy_memory_state_bytes Evictable operator state in memory.\n# TYPE eddy_memory_state_bytes gauge"
    );
    let _ = writeln!(out, "eddy_memory_state_bytes {}", engine.runtime.memory().used());
    let _ = writeln!(out, "# HELP eddy_subscriptions Live SUBSCRIBEs per relation.\n# TYPE eddy_subscriptions gauge");
    for (relation, n) in engine.runtime.feed().subscribers() {
        let _ = writeln!(out, "eddy_subscriptions{{relation=\"{}\"}} {n}", label(&name_of(relation)));
    }
    out
}
