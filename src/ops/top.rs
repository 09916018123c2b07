//! `reflexd top`: a live terminal view of a daemon's metrics. Each refresh is
//! one zenoh `get` on `<node>/metrics` (the daemon's queryable), so it needs
//! nothing but a zenoh route to the daemon. Rates and percentiles are over
//! the refresh window (the difference of two snapshots); `--once` prints one
//! screen with figures since the daemon started, for scripts and tests.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::client::{ConnectArgs, parse_secs};
use crate::error::ErrorCode;
use crate::logging::strip_source_locations;
use crate::obs::{HistSnapshot, MetricsSnapshot, PipelineSnapshot};

#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The daemon's `metrics.node` (its metrics are on `<node>/metrics`).
    #[arg(long, default_value = crate::config::metrics::DEFAULT_NODE)]
    pub node: String,
    /// Refresh period (seconds).
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub interval: Duration,
    /// Print one screen (figures since the daemon started) and exit.
    #[arg(long)]
    pub once: bool,
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |u| format!("{:.2}", u as f64 / 1000.0))
}

fn q(h: &HistSnapshot, p: f64) -> String {
    ms(h.quantile(p))
}

/// One pipeline's figures over a window: counts by outcome and histograms.
struct Window<'a> {
    p: &'a PipelineSnapshot,
    ok: u64,
    received: u64,
    err: u64,
    busy: u64,
    dropped: u64,
    missed: u64,
    late: u64,
    e2e: HistSnapshot,
    queue: HistSnapshot,
    ttft: HistSnapshot,
    tpot: HistSnapshot,
    tokens: u64,
}

fn window<'a>(p: &'a PipelineSnapshot, prev: Option<&PipelineSnapshot>) -> Window<'a> {
    let d = |now: u64, f: fn(&PipelineSnapshot) -> u64| now - prev.map_or(0, f).min(now);
    let code = |s: &PipelineSnapshot, c: ErrorCode| s.error(c);
    let errs_now: u64 = p.errors.values().sum();
    let hist = |h: &HistSnapshot, f: fn(&PipelineSnapshot) -> Option<&HistSnapshot>| match prev
        .and_then(f)
    {
        Some(e) => h.since(e),
        None => h.clone(),
    };
    let g = p.generation.as_ref();
    let empty = HistSnapshot::default();
    Window {
        p,
        ok: d(p.ok, |s| s.ok),
        received: d(p.received, |s| s.received),
        err: d(errs_now, |s| s.errors.values().sum()),
        busy: d(code(p, ErrorCode::Busy), |s| s.error(ErrorCode::Busy)),
        dropped: d(code(p, ErrorCode::Superseded), |s| {
            s.error(ErrorCode::Superseded)
        }),
        missed: d(code(p, ErrorCode::DeadlineExceeded), |s| {
            s.error(ErrorCode::DeadlineExceeded)
        }),
        late: d(p.late, |s| s.late),
        e2e: hist(&p.e2e, |s| Some(&s.e2e)),
        queue: hist(&p.queue_wait, |s| Some(&s.queue_wait)),
        ttft: hist(g.map_or(&empty, |g| &g.ttft), |s| {
            s.generation.as_ref().map(|g| &g.ttft)
        }),
        tpot: hist(g.map_or(&empty, |g| &g.tpot), |s| {
            s.generation.as_ref().map(|g| &g.tpot)
        }),
        tokens: d(g.map_or(0, |g| g.completion_tokens), |s| {
            s.generation.as_ref().map_or(0, |g| g.completion_tokens)
        }),
    }
}

/// Renders one screen. With `prev`, figures are over the time between the
/// two snapshots; without, since the daemon started.
pub fn render(cur: &MetricsSnapshot, prev: Option<&MetricsSnapshot>) -> String {
    let span = match prev {
        Some(p) => (cur.uptime_s - p.uptime_s).max(1e-3),
        None => cur.uptime_s.max(1e-3),
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "reflexd {} on {}  zid {}  up {:.0} s  {}",
        cur.version,
        cur.node,
        cur.zid,
        cur.uptime_s,
        match prev {
            Some(_) => format!("window {span:.1} s"),
            None => "figures since start".into(),
        }
    );
    if !cur.histograms {
        let _ = writeln!(o, "(histograms off: metrics.histograms = false)");
    }
    let wins: Vec<Window> = cur
        .pipelines
        .iter()
        .map(|p| window(p, prev.and_then(|s| s.pipeline(&p.name))))
        .collect();
    pipelines_table(&mut o, &wins, span);
    generations_table(&mut o, &wins, span);
    workers_table(&mut o, cur, prev, span);
    let errs: Vec<String> = cur
        .pipelines
        .iter()
        .flat_map(|p| {
            p.errors
                .iter()
                .map(move |(c, n)| format!("{}:{c}={n}", p.name))
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(o, "\nerrors since start: {}", errs.join("  "));
    }
    o
}

fn pipelines_table(o: &mut String, wins: &[Window], span: f64) {
    let _ = writeln!(
        o,
        "\n{:<14} {:<8} {:<9} {:<8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}",
        "PIPELINE",
        "KIND",
        "LEVEL",
        "PROVIDER",
        "RATE/s",
        "OK",
        "ERR",
        "BUSY",
        "DROP",
        "MISS",
        "LATE",
        "P50 ms",
        "P99 ms",
        "QWAIT p99"
    );
    for w in wins {
        let _ = writeln!(
            o,
            "{:<14} {:<8} {:<9} {:<8} {:>8.1} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}",
            w.p.name,
            w.p.kind,
            w.p.level,
            w.p.provider,
            w.received as f64 / span,
            w.ok,
            w.err,
            w.busy,
            w.dropped,
            w.missed,
            w.late,
            q(&w.e2e, 0.5),
            q(&w.e2e, 0.99),
            q(&w.queue, 0.99),
        );
    }
}

fn generations_table(o: &mut String, wins: &[Window], span: f64) {
    let gens: Vec<&Window> = wins.iter().filter(|w| w.p.generation.is_some()).collect();
    if gens.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n{:<14} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "GENERATION", "LIVE", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "TOK/s"
    );
    for w in gens {
        let g = w.p.generation.as_ref().expect("filtered");
        let _ = writeln!(
            o,
            "{:<14} {:>5} {:>10} {:>10} {:>10} {:>10} {:>8.1}",
            w.p.name,
            g.live,
            q(&w.ttft, 0.5),
            q(&w.ttft, 0.99),
            q(&w.tpot, 0.5),
            q(&w.tpot, 0.99),
            w.tokens as f64 / span,
        );
    }
}

fn workers_table(o: &mut String, cur: &MetricsSnapshot, prev: Option<&MetricsSnapshot>, span: f64) {
    let _ = writeln!(
        o,
        "\n{:<7} {:<28} {:>6} {:>10}",
        "WORKER", "LEVELS", "BUSY", "RUNS"
    );
    for wk in &cur.workers {
        let (busy, runs) = match prev.and_then(|p| p.workers.iter().find(|x| x.id == wk.id)) {
            Some(pw) => (
                (wk.busy_us.saturating_sub(pw.busy_us)) as f64 / (span * 1e6),
                wk.runs.saturating_sub(pw.runs),
            ),
            None => (wk.utilisation, wk.runs),
        };
        let _ = writeln!(
            o,
            "{:<7} {:<28} {:>5.0}% {:>10}",
            wk.id,
            wk.levels.join(","),
            (busy * 100.0).min(100.0),
            runs
        );
    }
}

/// Asks the daemon for one snapshot.
pub async fn fetch(
    session: &zenoh::Session,
    node: &str,
    timeout: Duration,
) -> Result<MetricsSnapshot, String> {
    let key = format!("{node}/metrics");
    let replies = session
        .get(key.clone())
        .timeout(timeout)
        .await
        .map_err(|e| strip_source_locations(&e.to_string()))?;
    let reply = replies
        .recv_async()
        .await
        .map_err(|_| {
            format!(
                "no daemon answered on {key} (is `metrics.node` {node:?}? with TLS: does the daemon's access control let this client query it?)"
            )
        })?;
    let sample = reply
        .result()
        .map_err(|e| format!("{key}: error reply {:?}", e.payload().to_bytes()))?;
    serde_json::from_slice(&sample.payload().to_bytes())
        .map_err(|e| format!("{key}: not a metrics snapshot: {e}"))
}

/// Writes one screen. On a terminal the screen is cleared first; anywhere
/// else (a pipe, a file, a log) screens follow one another, separated by a
/// blank line, with no escape sequences.
fn show<W: Write>(out: &mut W, tty: bool, screen: &str) -> bool {
    let r = if tty {
        write!(out, "\x1b[2J\x1b[H{screen}")
    } else {
        writeln!(out, "{screen}")
    };
    r.and_then(|_| out.flush()).is_ok()
}

/// Runs the view until `stop` resolves (live) or after one screen
/// (`--once`). `tty`: stdout is a terminal (the screen is redrawn in place).
pub async fn run<W: Write>(
    args: &TopArgs,
    out: &mut W,
    tty: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let session = args.conn.open().await.map_err(|e| e.to_string())?;
    let timeout = args.conn.connect_timeout;
    let mut prev = fetch(&session, &args.node, timeout).await?;
    if args.once {
        let _ = out.write_all(render(&prev, None).as_bytes());
        let _ = session.close().await;
        return Ok(());
    }
    // Something at once; windowed figures from the next refresh on.
    let mut open = show(out, tty, &render(&prev, None));
    tokio::pin!(stop);
    while open {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(args.interval) => {}
        }
        let cur = match fetch(&session, &args.node, timeout).await {
            Ok(c) => c,
            Err(e) => {
                open = show(out, tty, &format!("{e}\n(retrying)\n"));
                continue;
            }
        };
        // A restarted daemon (new zid) has fresh counters: no window.
        let screen = if cur.zid == prev.zid {
            render(&cur, Some(&prev))
        } else {
            render(&cur, None)
        };
        open = show(out, tty, &screen);
        prev = cur;
    }
    let _ = session.close().await;
    Ok(())
}
