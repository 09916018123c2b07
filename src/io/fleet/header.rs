//! What an offloaded request carries besides its payload, and the edits a
//! requesting daemon makes to the answers it passes on. The attachment of
//! every offload query is one small JSON object ([`OffloadHeader`]): the
//! requesting node, the stream, the level to run at, the budget left, and
//! the request ids for payloads that do not carry them. Predictions come
//! back as the serving daemon encoded them; [`rewrite_prediction`] puts the
//! requester's stream and end-to-end time in their metadata and says which
//! node ran them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};
use crate::wire::RequestMeta;

/// How the payload of an offloaded tensor request is encoded.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// A safetensors request the requester built from validated tensors
    /// (ids in its `__metadata__`), whatever the pipeline's own format.
    Tensors,
    /// The message exactly as the requester received it (remote-only
    /// pipelines): decoded with the serving pipeline's format; for `raw`,
    /// the ids are in this header.
    Message,
}

/// The attachment of an offload query.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OffloadHeader {
    /// The requesting daemon's node name.
    pub origin: String,
    /// The requester's stream id (tensor pipelines).
    #[serde(default)]
    pub stream: String,
    /// The requester's level name for this request.
    pub level: String,
    /// Time left of the request's budget when it was sent (µs).
    pub budget_us: u64,
    /// Tensor pipelines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Form>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_us: Option<u64>,
}

/// Longest attachment accepted on an offload query.
pub const MAX_HEADER_BYTES: usize = 4096;

impl OffloadHeader {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("header serializes")
    }

    pub fn decode(bytes: Option<&[u8]>) -> Result<OffloadHeader, Rejection> {
        let bytes = bytes.ok_or_else(|| bad("an offload query needs its header attachment"))?;
        if bytes.len() > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "offload header is {} bytes; at most {MAX_HEADER_BYTES}",
                bytes.len()
            )));
        }
        let h: OffloadHeader = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not an offload header: {e}")))?;
        if h.id
            .as_ref()
            .is_some_and(|id| id.len() > crate::wire::MAX_ID_LEN)
        {
            return Err(bad("offload header: id longer than 128 bytes"));
        }
        Ok(h)
    }

    pub fn meta(&self) -> RequestMeta {
        RequestMeta {
            id: self.id.clone(),
            seq: self.seq,
            ts_us: self.ts_us,
        }
    }
}

fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadPayload, msg)
}

/// What the requester changes in a prediction it passes on.
pub struct Rewrite<'a> {
    /// The requester's stream id.
    pub stream: &'a str,
    /// Node that ran the request.
    pub node: &'a str,
    /// Requester's receipt to now (µs).
    pub e2e_us: u64,
    pub late: bool,
}

/// Re-encodes a prediction's safetensors header with the requester's
/// stream and timing: `e2e_us` becomes the requester's end to end, the
/// server's is kept as `remote_e2e_us`, and `node` names the server. The
/// data section is copied unchanged (its offsets are relative to it).
pub fn rewrite_prediction(bytes: &[u8], r: &Rewrite) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("prediction shorter than its header length")?;
    let end = 8usize.checked_add(n).filter(|&e| e <= bytes.len());
    let end = end.ok_or("prediction header runs past the message")?;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| format!("prediction header: {e}"))?;
    let mut meta: HashMap<String, String> = match header.remove("__metadata__") {
        Some(m) => serde_json::from_value(m).map_err(|e| format!("prediction metadata: {e}"))?,
        None => HashMap::new(),
    };
    if let Some(e2e) = meta.remove("e2e_us") {
        meta.insert("remote_e2e_us".into(), e2e);
    }
    meta.insert("e2e_us".into(), r.e2e_us.to_string());
    meta.insert("stream".into(), r.stream.to_string());
    meta.insert("node".into(), r.node.to_string());
    if r.late {
        meta.insert("late".into(), "true".into());
    }
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(meta).expect("map"),
    );
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut out, &header).expect("writing to a Vec cannot fail");
    while out.len() % 8 != 0 {
        out.push(b' ');
    }
    let len = (out.len() - 8) as u64;
    out[..8].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// The code and message of an error the serving daemon sent.
pub fn error_of(body: &[u8]) -> (Option<ErrorCode>, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["code"]
        .as_str()
        .or_else(|| v["error"]["code"].as_str())
        .and_then(|c| ErrorCode::ALL.into_iter().find(|x| x.code() == c));
    let message = v["message"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .unwrap_or("the serving daemon sent an error without a message")
        .to_string();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::f32_tensor;
    use crate::wire::{decode_output, encode_request};

    #[test]
    fn header_round_trips_and_refuses_garbage() {
        let h = OffloadHeader {
            origin: "fleet/robot1".into(),
            stream: "front".into(),
            level: "realtime".into(),
            budget_us: 900,
            form: Some(Form::Tensors),
            id: Some("a".into()),
            seq: Some(3),
            ts_us: None,
        };
        assert_eq!(OffloadHeader::decode(Some(&h.encode())).unwrap(), h);
        for bad in [&b"{"[..], b"[]", b"{\"origin\":1}"] {
            let e = OffloadHeader::decode(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadPayload);
        }
        assert!(OffloadHeader::decode(None).is_err());
        assert!(OffloadHeader::decode(Some(&vec![b' '; 5000])).is_err());
    }

    #[test]
    fn rewritten_prediction_keeps_tensors_and_sets_requester_fields() {
        let y = f32_tensor("y", &[1, 3], &[1.0, 2.0, 3.0]);
        let meta = RequestMeta {
            id: Some("r1".into()),
            seq: Some(7),
            ts_us: None,
        };
        // A request has the same layout as a prediction.
        let mut pred = encode_request(std::slice::from_ref(&y), &meta);
        let r = Rewrite {
            stream: "front",
            node: "fleet/server",
            e2e_us: 1234,
            late: false,
        };
        let out = rewrite_prediction(&pred, &r).unwrap();
        let (ts, m) = decode_output(&out).unwrap();
        assert_eq!(ts, vec![y]);
        assert_eq!(m["id"], "r1");
        assert_eq!(m["stream"], "front");
        assert_eq!(m["node"], "fleet/server");
        assert_eq!(m["e2e_us"], "1234");
        pred.truncate(5);
        assert!(rewrite_prediction(&pred, &r).is_err());
    }
}
