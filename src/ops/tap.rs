//! `reflexd tap KEYEXPR`: prints every message on a key expression, decoded.
//! It subscribes like any other zenoh node, so it sees requests, predictions
//! (safetensors: tensor summaries and metadata via [`crate::wire`]), token
//! streams, final messages, errors and metrics snapshots alike. One line per
//! message on stdout; `--count`/`--timeout` make it finite for scripts.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::client::{ConnectArgs, parse_secs};
use crate::logging::strip_source_locations;
use crate::tensor::{Dtype, Tensor};
use crate::wire;

/// Values printed from the front of a tensor.
const HEAD: usize = 4;

#[derive(clap::Args, Debug, Clone)]
pub struct TapArgs {
    /// Key expression to watch, e.g. `reflexd/**` or `robot/mic/*`.
    pub keyexpr: String,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Exit after this long without a message (seconds).
    #[arg(long, value_parser = parse_secs)]
    pub timeout: Option<Duration>,
}

fn values(t: &Tensor) -> Option<Vec<f64>> {
    let n = t.dtype.size();
    let c = t.data.chunks_exact(n);
    Some(match t.dtype {
        Dtype::F32 => c
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => c
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I64 => c
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I32 => c
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::U8 => t.data.iter().map(|&b| b as f64).collect(),
        Dtype::Bool => t.data.iter().map(|&b| (b != 0) as u8 as f64).collect(),
        _ => return None,
    })
}

/// `name f32[1,2] min=… max=… mean=… [v0, v1, …]`.
pub fn tensor_summary(t: &Tensor) -> String {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let mut s = format!("{} {}[{}]", t.name, t.dtype.name(), shape.join(","));
    if let Some(v) = values(t).filter(|v| !v.is_empty()) {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let head: Vec<String> = v.iter().take(HEAD).map(|x| format!("{x:.4}")).collect();
        let more = if v.len() > HEAD { ", …" } else { "" };
        s += &format!(
            " min={min:.4} max={max:.4} mean={mean:.4} [{}{more}]",
            head.join(", ")
        );
    }
    s
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line describing a message's payload.
pub fn describe(payload: &[u8], attachment: Option<&[u8]>) -> String {
    if let Ok((tensors, meta)) = wire::decode_output(payload) {
        let mut keys: Vec<_> = meta.iter().collect();
        keys.sort();
        let meta: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ts: Vec<String> = tensors.iter().map(tensor_summary).collect();
        return format!("tensors {} | {}", ts.join(" | "), meta.join(" "));
    }
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        if v.get("code").is_some() && v.get("message").is_some() {
            return format!(
                "error code={} pipeline={} stream={} id={} seq={}: {}",
                text(&v, "code"),
                text(&v, "pipeline"),
                text(&v, "stream"),
                text(&v, "id"),
                text(&v, "seq"),
                text(&v, "message")
            );
        }
        if v["done"] == true {
            return format!(
                "final id={} finish={} prompt_tokens={} completion_tokens={} ttft_ms={} tpot_ms={} text={}",
                text(&v, "id"),
                text(&v, "finish_reason"),
                v["usage"]["prompt_tokens"],
                v["usage"]["completion_tokens"],
                v["timing"]["ttft_ms"],
                v["timing"]["tpot_ms"],
                v["text"]
            );
        }
        if v.get("seq").is_some() && v.get("text").is_some() {
            return format!(
                "token id={} seq={} text={}",
                text(&v, "id"),
                text(&v, "seq"),
                v["text"]
            );
        }
        if let Some(p) = v["pipelines"].as_array() {
            let names: Vec<String> = p.iter().map(|p| text(p, "name")).collect();
            return format!(
                "metrics node={} uptime_s={:.1} pipelines={}",
                text(&v, "node"),
                v["uptime_s"].as_f64().unwrap_or(0.0),
                names.join(",")
            );
        }
        return format!("json {v}");
    }
    let att = attachment
        .and_then(|a| wire::decode_attachment(a).ok())
        .map(|m| format!(" id={:?} seq={:?} ts_us={:?}", m.id, m.seq, m.ts_us))
        .unwrap_or_default();
    match std::str::from_utf8(payload) {
        Ok(s) if !payload.is_empty() && s.chars().all(|c| !c.is_control() || c == '\n') => {
            format!("text {:?}{att}", s.chars().take(200).collect::<String>())
        }
        _ => format!("bytes {}{att}", payload.len()),
    }
}

/// Prints messages until `--count`, `--timeout` or `stop`.
pub async fn run<W: Write>(
    args: &TapArgs,
    out: &mut W,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    zenoh::key_expr::KeyExpr::try_from(args.keyexpr.as_str())
        .map_err(|e| format!("{:?} is not a key expression: {e}", args.keyexpr))?;
    let session = args.conn.open().await.map_err(|e| e.to_string())?;
    let sub = session
        .declare_subscriber(args.keyexpr.clone())
        .await
        .map_err(|e| strip_source_locations(&e.to_string()))?;
    tokio::pin!(stop);
    let mut seen = 0usize;
    let result = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let next = async {
            match args.timeout {
                Some(t) => tokio::time::timeout(t, sub.recv_async()).await.ok(),
                None => Some(sub.recv_async().await),
            }
        };
        let sample = tokio::select! {
            _ = &mut stop => break Ok(()),
            s = next => s,
        };
        let Some(Ok(sample)) = sample else {
            break match args.count {
                Some(n) => Err(format!("{seen} of {n} messages before the timeout")),
                None => Ok(()),
            };
        };
        let att = sample.attachment().map(|a| a.to_bytes().into_owned());
        let line = describe(&sample.payload().to_bytes(), att.as_deref());
        if writeln!(out, "{} {line}", sample.key_expr()).is_err() {
            break Ok(());
        }
        let _ = out.flush();
        seen += 1;
    };
    let _ = session.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::f32_tensor;

    #[test]
    fn describes_predictions_errors_and_tokens() {
        let t = f32_tensor("y", &[1, 3], &[1.0, 2.0, 6.0]);
        let bytes = wire::encode_message(&[t], [("id".to_string(), "r1".to_string())].into());
        let d = describe(&bytes, None);
        assert_eq!(
            d,
            "tensors y f32[1,3] min=1.0000 max=6.0000 mean=3.0000 [1.0000, 2.0000, 6.0000] | id=r1"
        );
        let e = br#"{"code":"busy","message":"queue full","pipeline":"p","stream":"","id":"x","seq":null}"#;
        assert_eq!(
            describe(e, None),
            "error code=busy pipeline=p stream= id=x seq=-: queue full"
        );
        let tok = br#"{"id":"q","seq":3,"text":" Paris","token_id":7,"run_order":1}"#;
        assert_eq!(describe(tok, None), "token id=q seq=3 text=\" Paris\"");
        assert_eq!(describe(&[0, 159, 146, 150], None), "bytes 4");
    }
}
