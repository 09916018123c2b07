//! The optional Prometheus endpoint: a minimal HTTP/1.1 responder on tokio
//! (one response per connection) beside the data flow. `GET /metrics` is
//! the text exposition ([`render`]) of the same snapshot the zenoh exports
//! publish, plus the process's own figures; `GET /healthz` answers 200 while
//! every worker is alive and none is stuck in one model run (503 with the
//! reason otherwise: for a supervisor's liveness probe); `GET /` lists both.

pub mod render;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ctx::Ctx;
pub use render::{Layout, PipeLayout};

/// Scrapes served at the same time; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request head read (bytes) and how long a client may take to send it.
const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

const INDEX: &str = "reflexd metrics endpoint\n\nGET /metrics  Prometheus text format (docs/metrics.md)\nGET /healthz  200 ok while every worker is alive and none is stuck, else 503 and why\n";

/// Why the daemon is not healthy, if it is not: stopping, a dead worker, or
/// a worker inside one model run for longer than `service.max_run_ms`
/// (the same rule that withholds the systemd watchdog ping).
pub fn health(ctx: &Ctx) -> Result<(), String> {
    if ctx.sched.is_stopping() {
        return Err("shutting down".into());
    }
    if let Some(w) = ctx.progress.dead() {
        return Err(format!("worker {w} died (a panic outside a request)"));
    }
    let max_run = ctx.config.service.max_run;
    if let Some(s) = ctx.progress.stuck(max_run) {
        return Err(format!(
            "worker {} has been inside one model run for {:.1} s (service.max_run_ms = {})",
            s.worker,
            s.running_for.as_secs_f64(),
            max_run.as_millis()
        ));
    }
    Ok(())
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

type Response = (&'static str, &'static str, String);

fn route(ctx: &Ctx, method: &str, path: &str) -> Response {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::prometheus_text(ctx),
        ),
        ("GET", "/healthz") => match health(ctx) {
            Ok(()) => ("200 OK", TEXT, "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("{why}\n")),
        },
        ("GET", "/") => ("200 OK", TEXT, INDEX.to_string()),
        ("GET", _) => ("404 Not Found", TEXT, format!("not found\n\n{INDEX}")),
        _ => ("405 Method Not Allowed", TEXT, "GET only\n".to_string()),
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
    let (status, ctype, body) = route(ctx, method, path.split('?').next().unwrap_or(""));
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
