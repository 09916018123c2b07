//! `reflexd describe`: what a running daemon reads and writes, from one
//! zenoh `get` on its `<node>/describe` queryable. The ROS 2 topics come
//! first, one per line as `ros2 topic list -t` prints them (with the
//! direction and pipeline), then each pipeline with its zenoh keys, tensor
//! signature, stages, level, deadline and provider. `--json` prints the
//! reply as it came.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::client::ConnectArgs;
use crate::wire::describe::{Description, PipelineInfo};

#[derive(clap::Args, Debug, Clone)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The daemon's `metrics.node` (it answers on `<node>/describe`).
    #[arg(long, default_value = crate::config::metrics::DEFAULT_NODE)]
    pub node: String,
    /// Print the JSON reply instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Asks `<node>/describe`; the raw JSON reply.
pub async fn fetch(
    session: &zenoh::Session,
    node: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let key = format!("{node}/describe");
    let replies = session
        .get(key.clone())
        .timeout(timeout)
        .await
        .map_err(|e| e.to_string())?;
    let reply = replies
        .recv_async()
        .await
        .map_err(|_| format!("no daemon answered on {key} (is `metrics.node` {node:?}?)"))?;
    let sample = reply
        .result()
        .map_err(|e| format!("{key}: error reply {:?}", e.payload().to_bytes()))?;
    Ok(sample.payload().to_bytes().into_owned())
}

fn pad(s: &str, w: usize) -> String {
    format!("{s:<w$}")
}

/// The ROS 2 topics as `ros2 topic list -t` lines, with direction and
/// pipeline.
fn ros_topics(d: &Description, out: &mut String) {
    let rows: Vec<(String, &str, &str)> = d
        .pipelines
        .iter()
        .flat_map(|p| {
            p.ros2.iter().map(move |t| {
                (
                    format!("{} [{}]", t.topic, t.type_name),
                    t.role.as_str(),
                    p.name.as_str(),
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    if let Some(n) = &d.ros2 {
        let domains: Vec<String> = n.domains.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "ROS 2 node {} (domain {}):",
            n.name,
            if domains.is_empty() {
                "-".into()
            } else {
                domains.join(", ")
            }
        );
    }
    for (topic, role, pipeline) in rows {
        let _ = writeln!(out, "{}  {} {pipeline}", pad(&topic, w), pad(role, 6));
    }
    out.push('\n');
}

fn pipeline(p: &PipelineInfo, out: &mut String) {
    let _ = writeln!(
        out,
        "pipeline {} ({}): level {}, deadline {} ms, provider {}, model {}{}",
        p.name,
        p.kind,
        p.level,
        p.deadline_ms,
        p.provider,
        p.model,
        if p.max_batch > 1 {
            format!(", max_batch {}", p.max_batch)
        } else {
            String::new()
        }
    );
    let w = p.keys.iter().map(|k| k.key.len()).max().unwrap_or(0);
    for k in &p.keys {
        let _ = writeln!(
            out,
            "  {} {}  {}",
            pad(&k.role, 6),
            pad(&k.key, w),
            k.format
        );
    }
    for t in &p.ros2 {
        let _ = writeln!(
            out,
            "  {} {} [{}] ({}) on {}",
            pad(&t.role, 6),
            t.topic,
            t.type_name,
            t.flavour,
            t.key
        );
    }
    if !p.inputs.is_empty() {
        let _ = writeln!(out, "  tensors in: {}", p.inputs.join(", "));
    }
    if !p.outputs.is_empty() {
        let _ = writeln!(out, "  tensors out: {}", p.outputs.join(", "));
    }
    if !p.stages.is_empty() {
        let _ = writeln!(out, "  stages: {}", p.stages.join(" → "));
    }
}

/// The human-readable form of a description.
pub fn render(d: &Description) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reflexd {} on {}/describe (zid {})\n",
        d.version, d.node, d.zid
    );
    ros_topics(d, &mut out);
    for (i, p) in d.pipelines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        pipeline(p, &mut out);
    }
    out
}

/// Prints the description of the daemon `args` names.
pub async fn run<W: Write>(args: &DescribeArgs, out: &mut W) -> Result<(), String> {
    let session = args.conn.open().await.map_err(|e| e.to_string())?;
    let r = fetch(&session, &args.node, args.conn.connect_timeout).await;
    let _ = session.close().await;
    let json = r?;
    let text = if args.json {
        String::from_utf8_lossy(&json).into_owned() + "\n"
    } else {
        let d: Description = serde_json::from_slice(&json)
            .map_err(|e| format!("{}/describe: not a description: {e}", args.node))?;
        render(&d)
    };
    out.write_all(text.as_bytes()).map_err(|e| e.to_string())
}
