//! `reflexd top --fleet`: every daemon on the fabric in one view. Each
//! refresh asks the fabric which nodes are alive (a liveliness `get` on
//! `**/alive`) and for every daemon's snapshot in one query on
//! `**/metrics` (`ConsolidationMode::None`: one reply per daemon). Shown:
//! one line per node, each pipeline name summed over the nodes that run it
//! (histograms merged bucket by bucket, so the fleet's p50/p99 are true
//! percentiles of all requests), then offload (who sends what where, how it
//! ended) and what each server served for others. Rates are over the
//! refresh window per node (a restarted node, new zid, starts over).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use zenoh::query::ConsolidationMode;

use super::top::TopArgs;
use crate::logging::strip_source_locations;
use crate::obs::{HistSnapshot, MetricsSnapshot, PipelineSnapshot};

/// One refresh: the nodes whose liveliness token is present and the
/// snapshots that answered.
pub struct FleetView {
    pub alive: Vec<String>,
    pub snapshots: Vec<MetricsSnapshot>,
}

/// Asks the fabric for every node and snapshot.
pub async fn fetch(session: &zenoh::Session, timeout: Duration) -> Result<FleetView, String> {
    let err = |e: zenoh::Error| strip_source_locations(&e.to_string());
    let tokens = session
        .liveliness()
        .get("**/alive")
        .timeout(timeout)
        .await
        .map_err(err)?;
    let mut alive = Vec::new();
    while let Ok(r) = tokens.recv_async().await {
        if let Ok(s) = r.result()
            && let Some(node) = s.key_expr().as_str().strip_suffix("/alive")
        {
            alive.push(node.to_string());
        }
    }
    let replies = session
        .get("**/metrics")
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(err)?;
    let mut snapshots = Vec::new();
    while let Ok(r) = replies.recv_async().await {
        if let Ok(s) = r.result()
            && let Ok(m) = serde_json::from_slice::<MetricsSnapshot>(&s.payload().to_bytes())
        {
            snapshots.push(m);
        }
    }
    alive.sort();
    alive.dedup();
    snapshots.sort_by(|a, b| a.node.cmp(&b.node).then(a.zid.cmp(&b.zid)));
    snapshots.dedup_by(|a, b| a.zid == b.zid);
    Ok(FleetView { alive, snapshots })
}

/// Sums histograms bucket by bucket.
pub fn merge(hs: &[&HistSnapshot]) -> HistSnapshot {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = HistSnapshot::default();
    for h in hs {
        out.count += h.count;
        out.sum_us += h.sum_us;
        out.max_us = out.max_us.max(h.max_us);
        for &(upper, n) in &h.buckets {
            *buckets.entry(upper).or_default() += n;
        }
    }
    out.buckets = buckets.into_iter().collect();
    out
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |u| format!("{:.2}", u as f64 / 1000.0))
}

/// A pipeline's figures over the window (or since start without `prev`).
fn windowed(p: &PipelineSnapshot, prev: Option<&PipelineSnapshot>) -> PipelineSnapshot {
    let Some(e) = prev else { return p.clone() };
    let mut w = p.clone();
    w.received = p.received.saturating_sub(e.received);
    w.ok = p.ok.saturating_sub(e.ok);
    for (code, n) in w.errors.iter_mut() {
        *n = n.saturating_sub(e.errors.get(code).copied().unwrap_or(0));
    }
    w.e2e = p.e2e.since(&e.e2e);
    w
}

/// The snapshot of the same daemon (same zid) in the previous refresh.
fn previous<'a>(prev: &'a [MetricsSnapshot], m: &MetricsSnapshot) -> Option<&'a MetricsSnapshot> {
    prev.iter().find(|p| p.zid == m.zid)
}

fn span(m: &MetricsSnapshot, prev: Option<&MetricsSnapshot>) -> f64 {
    match prev {
        Some(p) => (m.uptime_s - p.uptime_s).max(1e-3),
        None => m.uptime_s.max(1e-3),
    }
}

fn nodes_table(o: &mut String, view: &FleetView, prev: &[MetricsSnapshot]) {
    let _ = writeln!(
        o,
        "{:<22} {:<6} {:>8} {:>5} {:>9} {:>9} {:>7}  FLEET",
        "NODE", "ALIVE", "UP s", "PIPES", "RATE/s", "OK", "ERR"
    );
    for m in &view.snapshots {
        let p = previous(prev, m);
        let s = span(m, p);
        let (mut rate, mut ok, mut err) = (0.0, 0, 0);
        for ps in &m.pipelines {
            let w = windowed(ps, p.and_then(|p| p.pipeline(&ps.name)));
            rate += w.received as f64 / s;
            ok += w.ok;
            err += w.errors.values().sum::<u64>();
        }
        let role = match &m.fleet {
            Some(f) if f.serve && !f.offloads.is_empty() => "serves, offloads",
            Some(f) if f.serve => "serves",
            Some(f) if !f.offloads.is_empty() => "offloads",
            _ => "-",
        };
        let alive = if view.alive.contains(&m.node) {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            o,
            "{:<22} {:<6} {:>8.0} {:>5} {:>9.1} {:>9} {:>7}  {role}",
            m.node,
            alive,
            m.uptime_s,
            m.pipelines.len(),
            rate,
            ok,
            err
        );
    }
    for n in &view.alive {
        if !view.snapshots.iter().any(|m| &m.node == n) {
            let _ = writeln!(o, "{n:<22} {:<6} (alive, no metrics answered)", "yes");
        }
    }
}

fn pipelines_table(o: &mut String, view: &FleetView, prev: &[MetricsSnapshot]) {
    let mut by_name: BTreeMap<&str, Vec<(PipelineSnapshot, f64, &str)>> = BTreeMap::new();
    for m in &view.snapshots {
        let p = previous(prev, m);
        let s = span(m, p);
        for ps in &m.pipelines {
            let w = windowed(ps, p.and_then(|p| p.pipeline(&ps.name)));
            by_name.entry(&ps.name).or_default().push((w, s, &m.node));
        }
    }
    let _ = writeln!(
        o,
        "\n{:<14} {:<8} {:>5} {:>9} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9}",
        "PIPELINE", "KIND", "NODES", "RATE/s", "OK", "ERR", "BUSY", "MISS", "P50 ms", "P99 ms"
    );
    for (name, rows) in &by_name {
        let rate: f64 = rows.iter().map(|(w, s, _)| w.received as f64 / s).sum();
        let code =
            |c: crate::error::ErrorCode| rows.iter().map(|(w, _, _)| w.error(c)).sum::<u64>();
        let e2e = merge(&rows.iter().map(|(w, _, _)| &w.e2e).collect::<Vec<_>>());
        let _ = writeln!(
            o,
            "{:<14} {:<8} {:>5} {:>9.1} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9}",
            name,
            rows[0].0.kind,
            rows.len(),
            rate,
            rows.iter().map(|(w, _, _)| w.ok).sum::<u64>(),
            rows.iter()
                .map(|(w, _, _)| w.errors.values().sum::<u64>())
                .sum::<u64>(),
            code(crate::error::ErrorCode::Busy),
            code(crate::error::ErrorCode::DeadlineExceeded),
            ms(e2e.quantile(0.5)),
            ms(e2e.quantile(0.99)),
        );
    }
}

fn offload_tables(o: &mut String, view: &FleetView) {
    let rows: Vec<_> = view
        .snapshots
        .iter()
        .filter_map(|m| m.fleet.as_ref().map(|f| (m, f)))
        .collect();
    if rows.iter().any(|(_, f)| !f.offloads.is_empty()) {
        let _ = writeln!(
            o,
            "\n{:<16} {:<12} {:<16} {:<13} {:<4} {:>7} {:>7} {:>6} {:>8} {:>6} {:>9} {:>9}",
            "FROM",
            "PIPELINE",
            "TO",
            "WHEN",
            "UP",
            "SENT",
            "REMOTE",
            "R.ERR",
            "FAILOVER",
            "LOCAL",
            "RTT p50",
            "RTT p99"
        );
        for (m, f) in &rows {
            for x in &f.offloads {
                let when = if x.remote_only {
                    "missing_model*"
                } else {
                    &x.when
                };
                let _ = writeln!(
                    o,
                    "{:<16} {:<12} {:<16} {:<13} {:<4} {:>7} {:>7} {:>6} {:>8} {:>6} {:>9} {:>9}",
                    m.node,
                    x.pipeline,
                    x.to,
                    when,
                    if x.target_up { "yes" } else { "no" },
                    x.offloaded,
                    x.remote_ok,
                    x.remote_err,
                    x.failover.values().sum::<u64>(),
                    x.kept_local + x.unavailable,
                    ms(x.round_trip.quantile(0.5)),
                    ms(x.round_trip.quantile(0.99)),
                );
            }
        }
        let _ = writeln!(
            o,
            "(since start; * no local model: LOCAL counts offload_unavailable)"
        );
    }
    let served: Vec<String> = rows
        .iter()
        .flat_map(|(m, f)| {
            f.served
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(move |(p, n)| format!("{}:{p}={n}", m.node))
        })
        .collect();
    if !served.is_empty() {
        let _ = writeln!(
            o,
            "\nserved for other nodes since start: {}",
            served.join("  ")
        );
    }
}

/// Renders one fleet screen; with `prev` (the previous refresh), figures
/// are per window.
pub fn render(view: &FleetView, prev: Option<&[MetricsSnapshot]>) -> String {
    let mut o = String::new();
    let up = view.alive.len();
    let _ = writeln!(
        o,
        "reflexd fleet: {} daemon(s) answered, {up} alive  {}\n",
        view.snapshots.len(),
        if prev.is_some() {
            "window per node"
        } else {
            "figures since start"
        }
    );
    let prev = prev.unwrap_or(&[]);
    nodes_table(&mut o, view, prev);
    pipelines_table(&mut o, view, prev);
    offload_tables(&mut o, view);
    o
}

/// Runs the fleet view until `stop` resolves, or once (`--once`).
pub async fn run<W: Write>(
    args: &TopArgs,
    out: &mut W,
    tty: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let session = args.conn.open().await.map_err(|e| e.to_string())?;
    let timeout = args.conn.connect_timeout;
    let first = fetch(&session, timeout).await?;
    if first.snapshots.is_empty() && first.alive.is_empty() {
        let _ = session.close().await;
        return Err("no daemon answered on **/metrics and no **/alive token is visible: is this client connected to the fabric (--connect a router or a daemon)?".into());
    }
    let mut prev = first.snapshots.clone();
    let screen = render(&first, None);
    if args.once {
        let _ = out.write_all(screen.as_bytes());
        let _ = session.close().await;
        return Ok(());
    }
    let mut open = super::top::show(out, tty, &screen);
    tokio::pin!(stop);
    while open {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(args.interval) => {}
        }
        match fetch(&session, timeout).await {
            Ok(view) => {
                open = super::top::show(out, tty, &render(&view, Some(&prev)));
                prev = view.snapshots;
            }
            Err(e) => open = super::top::show(out, tty, &format!("{e}\n(retrying)\n")),
        }
    }
    let _ = session.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(samples: &[(u64, u64)]) -> HistSnapshot {
        HistSnapshot {
            count: samples.iter().map(|s| s.1).sum(),
            sum_us: samples.iter().map(|s| s.0 * s.1).sum(),
            max_us: samples.iter().map(|s| s.0).max().unwrap_or(0),
            buckets: samples.to_vec(),
        }
    }

    #[test]
    fn merged_percentiles_cover_every_node() {
        // Node a: 99 fast requests; node b: 1 slow one. The fleet p99 is
        // the fast bucket, the max the slow one; a per-node mean would hide it.
        let a = hist(&[(1000, 99)]);
        let b = hist(&[(50_000, 1)]);
        let m = merge(&[&a, &b]);
        assert_eq!(m.count, 100);
        assert_eq!(m.quantile(0.99), Some(1000));
        assert_eq!(m.quantile(1.0), Some(50_000));
        assert_eq!(m.buckets, vec![(1000, 99), (50_000, 1)]);
    }
}
