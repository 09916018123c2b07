//! The optional Prometheus endpoint: renders a [`MetricsSnapshot`] in the
//! text exposition format (0.0.4) and serves it from a minimal HTTP/1.1
//! responder on tokio (`GET /metrics`, one response per connection). Names
//! follow Prometheus conventions (`_total` counters, `_seconds` histograms);
//! generation latencies follow the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.server.time_to_first_token` → `gen_ai_server_time_to_first_token_seconds`).
//! Histogram buckets are summed from the µs-resolution histogram, so a
//! bucket edge is exact to the histogram's resolution (≤ 1.6 %); `_count`
//! and `_sum` are exact.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::Ctx;
use crate::error::ErrorCode;
use crate::obs::{HistSnapshot, MetricsSnapshot};

/// Scrapes served at the same time; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request head read (bytes) and how long a client may take to send it.
const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

use crate::obs::hist::EXPORT_BUCKETS_US as BUCKETS_US;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect();
    inner.join(",")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, l: &str, h: &HistSnapshot) {
    for le in BUCKETS_US {
        let _ = writeln!(
            out,
            "{name}_bucket{{{l},le=\"{}\"}} {}",
            le as f64 / 1e6,
            h.count_le(le)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
}

/// Renders the snapshot in the Prometheus text format.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let base = |p: &crate::obs::PipelineSnapshot| {
        labels(&[
            ("pipeline", &p.name),
            ("kind", &p.kind),
            ("level", &p.level),
        ])
    };
    header(
        &mut o,
        "reflexd_pipeline_info",
        "gauge",
        "Pipeline description: level, model and the execution provider in use.",
    );
    for p in &s.pipelines {
        let l = labels(&[
            ("pipeline", &p.name),
            ("kind", &p.kind),
            ("level", &p.level),
            ("provider", &p.provider),
            ("model", &p.model),
        ]);
        let _ = writeln!(o, "reflexd_pipeline_info{{{l}}} 1");
    }
    header(
        &mut o,
        "reflexd_received_total",
        "counter",
        "Requests that reached the pipeline's subscriber.",
    );
    for p in &s.pipelines {
        let _ = writeln!(o, "reflexd_received_total{{{}}} {}", base(p), p.received);
    }
    header(
        &mut o,
        "reflexd_requests_total",
        "counter",
        "Finished requests by outcome: ok or the stable error code (busy = rejected when full, superseded = dropped by a newer frame, deadline_exceeded = budget passed).",
    );
    for p in &s.pipelines {
        let b = base(p);
        let _ = writeln!(o, "reflexd_requests_total{{{b},outcome=\"ok\"}} {}", p.ok);
        for c in ErrorCode::ALL {
            let _ = writeln!(
                o,
                "reflexd_requests_total{{{b},outcome=\"{}\"}} {}",
                c.code(),
                p.error(c)
            );
        }
    }
    header(
        &mut o,
        "reflexd_late_total",
        "counter",
        "Results that finished after their deadline (published flagged late, or dropped with late = \"drop\"); jobs dropped before they could start are reflexd_requests_total{outcome=\"deadline_exceeded\"}.",
    );
    for p in &s.pipelines {
        let _ = writeln!(o, "reflexd_late_total{{{}}} {}", base(p), p.late);
    }
    for (name, help, get) in [
        (
            "reflexd_queue_wait_seconds",
            "Receipt to start of the model run (generation: to the first step).",
            (|p| &p.queue_wait) as fn(&crate::obs::PipelineSnapshot) -> &HistSnapshot,
        ),
        (
            "reflexd_inference_seconds",
            "One model run (generation: one prefill chunk or decode step).",
            |p| &p.inference,
        ),
        (
            "reflexd_request_duration_seconds",
            "Receipt to publication of a successful prediction (generation: to the final message).",
            |p| &p.e2e,
        ),
    ] {
        header(&mut o, name, "histogram", help);
        for p in &s.pipelines {
            histogram(&mut o, name, &base(p), get(p));
        }
    }
    let gens: Vec<_> = s
        .pipelines
        .iter()
        .filter_map(|p| p.generation.as_ref().map(|g| (p, g)))
        .collect();
    if !gens.is_empty() {
        let gl = |p: &crate::obs::PipelineSnapshot| {
            labels(&[
                ("pipeline", &p.name),
                ("gen_ai_operation_name", "chat"),
                ("gen_ai_request_model", &p.model),
            ])
        };
        header(
            &mut o,
            "gen_ai_server_time_to_first_token_seconds",
            "histogram",
            "Time to generate the first token (OpenTelemetry gen_ai.server.time_to_first_token).",
        );
        for (p, g) in &gens {
            histogram(
                &mut o,
                "gen_ai_server_time_to_first_token_seconds",
                &gl(p),
                &g.ttft,
            );
        }
        header(
            &mut o,
            "gen_ai_server_time_per_output_token_seconds",
            "histogram",
            "Time per output token after the first (OpenTelemetry gen_ai.server.time_per_output_token).",
        );
        for (p, g) in &gens {
            histogram(
                &mut o,
                "gen_ai_server_time_per_output_token_seconds",
                &gl(p),
                &g.tpot,
            );
        }
        header(
            &mut o,
            "gen_ai_server_request_duration_seconds",
            "histogram",
            "Generation request duration (OpenTelemetry gen_ai.server.request.duration).",
        );
        for (p, _) in &gens {
            histogram(
                &mut o,
                "gen_ai_server_request_duration_seconds",
                &gl(p),
                &p.e2e,
            );
        }
        header(
            &mut o,
            "reflexd_gen_ai_tokens_total",
            "counter",
            "Tokens processed, by OpenTelemetry gen_ai.token.type (input = prompt, output = completion).",
        );
        for (p, g) in &gens {
            let l = gl(p);
            let _ = writeln!(
                o,
                "reflexd_gen_ai_tokens_total{{{l},gen_ai_token_type=\"input\"}} {}",
                g.prompt_tokens
            );
            let _ = writeln!(
                o,
                "reflexd_gen_ai_tokens_total{{{l},gen_ai_token_type=\"output\"}} {}",
                g.completion_tokens
            );
        }
        header(
            &mut o,
            "reflexd_generations_live",
            "gauge",
            "Generations queued or running.",
        );
        for (p, g) in &gens {
            let _ = writeln!(o, "reflexd_generations_live{{{}}} {}", gl(p), g.live);
        }
    }
    header(
        &mut o,
        "reflexd_worker_busy_seconds_total",
        "counter",
        "Time each worker thread spent running jobs (utilisation = rate of this).",
    );
    for w in &s.workers {
        let l = labels(&[
            ("worker", &w.id.to_string()),
            ("levels", &w.levels.join(",")),
        ]);
        let _ = writeln!(
            o,
            "reflexd_worker_busy_seconds_total{{{l}}} {}",
            w.busy_us as f64 / 1e6
        );
    }
    header(
        &mut o,
        "reflexd_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(o, "reflexd_uptime_seconds {}", s.uptime_s);
    o
}

/// Accepts scrapes until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Prometheus endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "Prometheus endpoint: too many connections, closing");
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(conn, &ctx).await {
                tracing::debug!(%peer, error = %e, "Prometheus scrape failed");
            }
            drop(permit);
        });
    }
}

async fn respond(mut conn: tokio::net::TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if head.is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request head timeout",
        ));
    }
    head.expect("checked")?;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&super::metrics::snapshot(ctx)),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
