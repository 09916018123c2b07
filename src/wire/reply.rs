//! Messages out of the daemon: predictions (safetensors with string
//! metadata), error messages, and the token and final messages of a
//! generation (docs/protocol.md § Predictions, Errors, Generation
//! pipelines). A prediction is written once, straight from the runtime's
//! output memory into the buffer zenoh sends: header first (a pipeline's
//! fixed metadata is serialised once at start and copied in), then each
//! output's bytes, so no intermediate tensor copies exist.

use std::collections::HashMap;
use std::io::Write as _;

use bytes::Bytes;
use serde::Serialize;

use crate::error::Rejection;
use crate::obs::cost::CostReport;
use crate::tensor::{Dtype, Tensor};

/// One output of a reply, read in place from the runtime's output.
pub struct OutTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    /// Shape of the whole runtime output.
    pub shape: &'a [i64],
    /// All of the runtime output's bytes.
    pub data: &'a [u8],
    /// For one request of a batched run: `(axis, first row, rows)` of the
    /// batch axis that belong to it.
    pub rows: Option<(usize, usize, usize)>,
}

impl OutTensor<'_> {
    fn dims(&self) -> impl Iterator<Item = usize> + '_ {
        self.shape
            .iter()
            .enumerate()
            .map(|(i, &d)| match self.rows {
                Some((axis, _, n)) if axis == i => n,
                _ => d.max(0) as usize,
            })
    }

    fn byte_len(&self) -> usize {
        self.dims().product::<usize>() * self.dtype.size()
    }

    /// A copy as an owned tensor.
    pub fn to_tensor(&self) -> Tensor {
        let mut data = Vec::with_capacity(self.byte_len());
        self.write_to(&mut data);
        Tensor::new(self.name, self.dtype, self.dims().collect(), data)
    }

    /// The bytes of this request's part, in order (one chunk per index of
    /// the dimensions before the batch axis).
    fn write_to(&self, out: &mut Vec<u8>) {
        match self.rows {
            None => out.extend_from_slice(&self.data[..self.byte_len().min(self.data.len())]),
            Some((axis, start, rows)) => {
                let dims: Vec<usize> = self.shape.iter().map(|&d| d.max(0) as usize).collect();
                let outer: usize = dims[..axis].iter().product();
                let n = dims[axis];
                let inner: usize = dims[axis + 1..].iter().product::<usize>() * self.dtype.size();
                for o in 0..outer {
                    let base = (o * n + start) * inner;
                    out.extend_from_slice(&self.data[base..base + rows * inner]);
                }
            }
        }
    }
}

/// Per-request metadata of a prediction; `fixed` is the pipeline's
/// pre-serialised part (see [`fixed_meta`]).
pub struct ReplyMeta<'a> {
    pub fixed: &'a str,
    pub id: Option<&'a str>,
    pub seq: Option<u64>,
    pub ts_us: Option<u64>,
    pub stream: &'a str,
    /// Requests in the session call, for batched pipelines.
    pub batch: Option<usize>,
    pub recv_order: u64,
    pub run_order: u64,
    pub queue_us: u64,
    pub inference_us: u64,
    pub e2e_us: u64,
    /// Finished after its deadline.
    pub late: bool,
    /// More string metadata: pre-processing time, the answer's JSON when a
    /// pipeline publishes both (docs/answers.md), a chain's stage timing.
    pub extra: &'a [(&'a str, &'a str)],
}

/// Serialises constant metadata pairs once, as the inside of a JSON object
/// (`"k":"v",…` with a trailing comma) for [`encode_prediction`].
pub fn fixed_meta(pairs: &[(&str, &str)]) -> String {
    let mut s = Vec::new();
    for (k, v) in pairs {
        json_str(&mut s, k);
        s.push(b':');
        json_str(&mut s, v);
        s.push(b',');
    }
    String::from_utf8(s).expect("JSON is UTF-8")
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

fn kv_num(out: &mut Vec<u8>, k: &str, v: u64) {
    // Safetensors metadata values are strings.
    let _ = write!(out, "\"{k}\":\"{v}\",");
}

fn kv_str(out: &mut Vec<u8>, k: &str, v: &str) {
    json_str(out, k);
    out.push(b':');
    json_str(out, v);
    out.push(b',');
}

/// The safetensors name of a dtype.
pub fn st_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::F16 => "F16",
        Dtype::Bf16 => "BF16",
        Dtype::I8 => "I8",
        Dtype::I16 => "I16",
        Dtype::I32 => "I32",
        Dtype::I64 => "I64",
        Dtype::U8 => "U8",
        Dtype::U16 => "U16",
        Dtype::U32 => "U32",
        Dtype::U64 => "U64",
        Dtype::Bool => "BOOL",
    }
}

fn write_meta(buf: &mut Vec<u8>, m: &ReplyMeta) {
    buf.extend_from_slice(br#"{"__metadata__":{"#);
    buf.extend_from_slice(m.fixed.as_bytes());
    if let Some(id) = m.id {
        kv_str(buf, "id", id);
    }
    if let Some(seq) = m.seq {
        kv_num(buf, "seq", seq);
    }
    if let Some(ts) = m.ts_us {
        kv_num(buf, "ts_us", ts);
    }
    kv_str(buf, "stream", m.stream);
    if let Some(b) = m.batch {
        kv_num(buf, "batch", b as u64);
    }
    kv_num(buf, "recv_order", m.recv_order);
    kv_num(buf, "run_order", m.run_order);
    kv_num(buf, "queue_us", m.queue_us);
    kv_num(buf, "inference_us", m.inference_us);
    kv_num(buf, "e2e_us", m.e2e_us);
    for (k, v) in m.extra {
        kv_str(buf, k, v);
    }
    let _ = write!(buf, "\"late\":\"{}\"}}", m.late);
}

/// Writes a prediction message in one buffer: a safetensors header with
/// `meta` as its `__metadata__`, then each output's bytes.
pub fn encode_prediction(m: &ReplyMeta, outputs: &[OutTensor]) -> Vec<u8> {
    let data_len: usize = outputs.iter().map(|o| o.byte_len()).sum();
    let mut buf = Vec::with_capacity(8 + 384 + 96 * outputs.len() + data_len);
    buf.extend_from_slice(&[0; 8]);
    write_meta(&mut buf, m);
    let mut offset = 0;
    for o in outputs {
        let n = o.byte_len();
        buf.push(b',');
        json_str(&mut buf, o.name);
        let _ = write!(buf, r#":{{"dtype":"{}","shape":["#, st_name(o.dtype));
        for (i, d) in o.dims().enumerate() {
            let _ = write!(buf, "{}{d}", if i > 0 { "," } else { "" });
        }
        let _ = write!(buf, r#"],"data_offsets":[{offset},{}]}}"#, offset + n);
        offset += n;
    }
    buf.push(b'}');
    // Pad the header so the data starts 8-byte aligned, as safetensors does.
    while buf.len() % 8 != 0 {
        buf.push(b' ');
    }
    let header = (buf.len() - 8) as u64;
    buf[..8].copy_from_slice(&header.to_le_bytes());
    for o in outputs {
        o.write_to(&mut buf);
    }
    buf
}

/// A decoded prediction: tensors plus metadata (clients and tests).
pub fn decode_output(bytes: &[u8]) -> Result<(Vec<Tensor>, HashMap<String, String>), Rejection> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| super::bad(format!("not a safetensors message: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let (tensors, _) =
        super::request::decode_safetensors(&Bytes::copy_from_slice(bytes), usize::MAX)
            .map_err(|(r, _)| r)?;
    Ok((tensors, meta))
}

/// The JSON body published on a pipeline's error key.
#[derive(Serialize, Debug)]
pub struct ErrorMessage<'a> {
    pub code: &'static str,
    pub message: &'a str,
    pub pipeline: &'a str,
    pub stream: &'a str,
    /// Request id from the message metadata; `null` when the message could not
    /// be parsed far enough to read one.
    pub id: Option<&'a str>,
    pub seq: Option<u64>,
}

impl ErrorMessage<'_> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error message serializes")
    }
}

/// One streamed piece of a generation's text.
#[derive(Serialize)]
pub struct TokenMsg<'a> {
    pub id: &'a str,
    pub seq: usize,
    pub text: &'a str,
    pub token_id: Option<u32>,
    /// Daemon event order of the step that produced the token.
    pub run_order: u64,
}

impl TokenMsg<'_> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("token message serializes")
    }
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not prefilled).
    pub cached_prompt_tokens: usize,
}

/// Speculative decoding of one generation (docs/protocol.md).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SpecReport {
    /// `"prompt_lookup"` or `"draft"`.
    pub mode: &'static str,
    /// Draft tokens verified, and how many of them were kept.
    pub drafted: u64,
    pub accepted: u64,
    pub acceptance: Option<f64>,
    /// Verify passes, and the tokens they produced per pass.
    pub verify_steps: u64,
    pub tokens_per_verify: Option<f64>,
    /// Decode steps without a verify (no draft, or not worth it).
    pub plain_steps: u64,
    /// Estimated decode time in plain steps / actual decode time.
    pub tpot_gain: f64,
}

/// Timing of a finished generation, in milliseconds (docs/protocol.md).
#[derive(Serialize, Debug, Clone, Copy)]
pub struct Timing {
    pub queue_ms: f64,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub total_ms: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

/// The last message of a generation.
#[derive(Serialize)]
pub struct FinalMsg<'a> {
    pub id: &'a str,
    pub done: bool,
    pub finish_reason: &'static str,
    pub text: &'a str,
    pub usage: Usage,
    pub timing: Timing,
    pub provider: &'a str,
    /// Ended after its deadline.
    pub late: bool,
    /// CPU time (and energy, on boards with power rails) of its steps.
    pub cost: CostReport,
    /// Present when the pipeline speculates and the request was greedy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpecReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody<'a>>,
    /// The daemon that generated the answer (or its start) when it was
    /// offloaded to another node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<&'a str>,
}

impl FinalMsg<'_> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("final message serializes")
    }
}

/// The final object a generation query gets when its command was refused.
pub fn refused_query(id: Option<&str>, rej: &Rejection) -> Vec<u8> {
    serde_json::json!({
        "id": id, "done": true, "finish_reason": "error",
        "error": { "code": rej.code.code(), "message": rej.message },
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::f32_tensor;

    fn meta(fixed: &str) -> ReplyMeta<'_> {
        ReplyMeta {
            fixed,
            id: Some("a\"b"),
            seq: Some(3),
            ts_us: None,
            stream: "front",
            batch: None,
            recv_order: 1,
            run_order: 2,
            queue_us: 10,
            inference_us: 20,
            e2e_us: 40,
            late: false,
            extra: &[],
        }
    }

    #[test]
    fn prediction_decodes_with_safetensors_and_keeps_metadata() {
        let x = f32_tensor("y", &[1, 3], &[1.0, -2.0, 3.5]);
        let fixed = fixed_meta(&[("pipeline", "p"), ("model", "m.onnx")]);
        let out = OutTensor {
            name: "y",
            dtype: Dtype::F32,
            shape: &[1, 3],
            data: &x.data,
            rows: None,
        };
        let bytes = encode_prediction(&meta(&fixed), &[out]);
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        assert_eq!(st.tensor("y").unwrap().data(), &x.data[..]);
        let (ts, m) = decode_output(&bytes).unwrap();
        assert_eq!(ts, vec![x]);
        assert_eq!(m["id"], "a\"b");
        assert_eq!(m["pipeline"], "p");
        assert_eq!(m["seq"], "3");
        assert_eq!(m["late"], "false");
        assert_eq!(m["e2e_us"], "40");
    }

    #[test]
    fn batch_rows_are_cut_along_a_middle_axis() {
        // [2, B=3, 2]: request rows 1..3 along axis 1.
        let all: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let t = f32_tensor("s", &[2, 3, 2], &all);
        let out = OutTensor {
            name: "s",
            dtype: Dtype::F32,
            shape: &[2, 3, 2],
            data: &t.data,
            rows: Some((1, 1, 2)),
        };
        let fixed = fixed_meta(&[]);
        let (ts, _) = decode_output(&encode_prediction(&meta(&fixed), &[out])).unwrap();
        assert_eq!(ts[0].shape, vec![2, 2, 2]);
        assert_eq!(
            crate::tensor::f32_values(&ts[0]).unwrap(),
            vec![2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]
        );
    }
}
