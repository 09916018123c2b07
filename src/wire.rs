//! Wire formats at the daemon's edges (see `docs/protocol.md`). Ingress calls
//! [`decode_safetensors`] / [`decode_raw`] inside the zenoh callback, so both
//! only parse and bound-check: a hostile payload costs at most one copy of its
//! bytes. Workers call [`encode_output`] to build the prediction message.

use std::collections::HashMap;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use crate::error::{ErrorCode, Rejection};

/// Element types the daemon moves between zenoh and ONNX Runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    F16,
    Bf16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Dtype {
    pub const NAMES: [&'static str; 13] = [
        "f32", "f64", "f16", "bf16", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool",
    ];
    const ALL: [Dtype; 13] = [
        Dtype::F32,
        Dtype::F64,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::Bool,
    ];

    pub fn parse(s: &str) -> Option<Dtype> {
        Dtype::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Dtype::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Dtype::NAMES[Dtype::ALL.iter().position(|d| *d == self).expect("in ALL")]
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    pub fn to_safetensors(self) -> StDtype {
        match self {
            Dtype::F32 => StDtype::F32,
            Dtype::F64 => StDtype::F64,
            Dtype::F16 => StDtype::F16,
            Dtype::Bf16 => StDtype::BF16,
            Dtype::I8 => StDtype::I8,
            Dtype::I16 => StDtype::I16,
            Dtype::I32 => StDtype::I32,
            Dtype::I64 => StDtype::I64,
            Dtype::U8 => StDtype::U8,
            Dtype::U16 => StDtype::U16,
            Dtype::U32 => StDtype::U32,
            Dtype::U64 => StDtype::U64,
            Dtype::Bool => StDtype::BOOL,
        }
    }

    pub fn from_safetensors(d: StDtype) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|x| x.to_safetensors() == d)
    }

    /// Encodes config-supplied numbers; `None` when a value does not fit.
    pub fn encode_f64(self, values: &[f64]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            let int_ok = |lo: f64, hi: f64| v.fract() == 0.0 && v >= lo && v <= hi;
            match self {
                Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
                Dtype::I64 if int_ok(-9.007e15, 9.007e15) => {
                    out.extend_from_slice(&(v as i64).to_le_bytes())
                }
                Dtype::I32 if int_ok(i32::MIN as f64, i32::MAX as f64) => {
                    out.extend_from_slice(&(v as i32).to_le_bytes())
                }
                Dtype::U8 if int_ok(0.0, 255.0) => out.push(v as u8),
                Dtype::I8 if int_ok(-128.0, 127.0) => out.push(v as i8 as u8),
                Dtype::Bool if v == 0.0 || v == 1.0 => out.push(v as u8),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// One named tensor as it crosses the wire: little-endian element bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Request metadata carried next to the tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMeta {
    pub id: Option<String>,
    pub seq: Option<u64>,
    /// Source timestamp, microseconds since the Unix epoch.
    pub ts_us: Option<u64>,
}

/// Metadata keys understood in requests.
pub const META_ID: &str = "id";
pub const META_SEQ: &str = "seq";
pub const META_TS: &str = "ts_us";
/// Longest request id echoed back, so a client cannot make replies grow.
pub const MAX_ID_LEN: usize = 128;

fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadPayload, msg)
}

/// A rejection plus whatever request metadata was read before it, so the
/// error reply can still name the request.
pub type Failed = (Rejection, RequestMeta);

fn meta_from_map(map: Option<&HashMap<String, String>>) -> Result<RequestMeta, Failed> {
    let mut meta = RequestMeta::default();
    let Some(map) = map else {
        return Ok(meta);
    };
    if let Some(id) = map.get(META_ID) {
        if id.len() > MAX_ID_LEN {
            return Err((
                bad(format!("metadata `id` is longer than {MAX_ID_LEN} bytes")),
                meta,
            ));
        }
        meta.id = Some(id.clone());
    }
    for (k, slot) in [(META_SEQ, &mut meta.seq), (META_TS, &mut meta.ts_us)] {
        if let Some(v) = map.get(k) {
            match v.parse::<u64>() {
                Ok(n) => *slot = Some(n),
                Err(_) => {
                    let r = bad(format!("metadata `{k}` = {v:?} is not an unsigned integer"));
                    // `meta` is borrowed by the loop; rebuild the id-only part.
                    let id = map.get(META_ID).cloned();
                    return Err((
                        r,
                        RequestMeta {
                            id,
                            ..Default::default()
                        },
                    ));
                }
            }
        }
    }
    Ok(meta)
}

/// Parses a safetensors message, reading the header once. Bounds: the caller
/// has checked the payload size; here each tensor's element count is checked
/// against `max_elements`. Errors found after the metadata was read carry it.
pub fn decode_safetensors(
    bytes: &[u8],
    max_elements: usize,
) -> Result<(Vec<Tensor>, RequestMeta), Failed> {
    let (n, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        (
            bad(format!("not a safetensors message: {e}")),
            RequestMeta::default(),
        )
    })?;
    let meta = meta_from_map(header.metadata().as_ref())?;
    let data = &bytes[8 + n..];
    let names = header.offset_keys();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = header
            .info(&name)
            .expect("offset_keys come from the header");
        let fail = |code, msg: String| (Rejection::new(code, msg), meta.clone());
        let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| {
            fail(
                ErrorCode::WrongDtype,
                format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
            )
        })?;
        let elements: usize = info.shape.iter().product();
        if elements > max_elements {
            return Err(fail(
                ErrorCode::TooManyElements,
                format!("tensor `{name}` has {elements} elements; the limit is {max_elements}"),
            ));
        }
        let (start, end) = info.data_offsets;
        tensors.push(Tensor {
            shape: info.shape.clone(),
            data: data[start..end].to_vec(),
            name,
            dtype,
        });
    }
    Ok((tensors, meta))
}

/// Parses a `raw` message: exactly one tensor's bytes with config-fixed dtype
/// and shape. The request id, if any, comes from the zenoh attachment.
pub fn decode_raw(
    bytes: &[u8],
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<Tensor, Rejection> {
    let want = shape.iter().product::<usize>() * dtype.size();
    if bytes.len() != want {
        return Err(Rejection::new(
            ErrorCode::WrongShape,
            format!(
                "raw payload has {} bytes; {} {:?} needs {want}",
                bytes.len(),
                dtype.name(),
                shape
            ),
        ));
    }
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data: bytes.to_vec(),
    })
}

/// Parses a `raw` message's attachment: `key=value` pairs separated by `;`
/// (`id=cam0-17;seq=17;ts_us=…`), or a bare string taken as the id.
pub fn decode_attachment(att: &[u8]) -> Result<RequestMeta, Failed> {
    let none = |r| (r, RequestMeta::default());
    let s = std::str::from_utf8(att).map_err(|_| none(bad("attachment is not UTF-8")))?;
    if !s.contains('=') {
        if s.len() > MAX_ID_LEN {
            return Err(none(bad(format!(
                "attachment id is longer than {MAX_ID_LEN} bytes"
            ))));
        }
        return Ok(RequestMeta {
            id: Some(s.to_string()),
            ..Default::default()
        });
    }
    let map: HashMap<String, String> = s
        .split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| none(bad(format!("attachment entry {kv:?} is not key=value"))))
        })
        .collect::<Result<_, _>>()?;
    meta_from_map(Some(&map))
}

impl View for &Tensor {
    fn dtype(&self) -> StDtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Builds a prediction message: the tensors plus string metadata.
pub fn encode_output(tensors: &[Tensor], metadata: HashMap<String, String>) -> Vec<u8> {
    safetensors::serialize(tensors.iter().map(|t| (t.name.as_str(), t)), Some(metadata))
        .expect("tensors built by the daemon have consistent shapes")
}

/// Builds a request message (used by clients, the simulator and tests).
pub fn encode_request(tensors: &[Tensor], meta: &RequestMeta) -> Vec<u8> {
    let mut map = HashMap::new();
    if let Some(id) = &meta.id {
        map.insert(META_ID.to_string(), id.clone());
    }
    if let Some(seq) = meta.seq {
        map.insert(META_SEQ.to_string(), seq.to_string());
    }
    if let Some(ts) = meta.ts_us {
        map.insert(META_TS.to_string(), ts.to_string());
    }
    encode_output(tensors, map)
}

/// A decoded prediction: tensors plus metadata (clients and tests).
pub fn decode_output(bytes: &[u8]) -> Result<(Vec<Tensor>, HashMap<String, String>), Rejection> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors message: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let (tensors, _) = decode_safetensors(bytes, usize::MAX).map_err(|(r, _)| r)?;
    Ok((tensors, meta))
}

/// f32 convenience for building tensors.
pub fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> Tensor {
    Tensor {
        name: name.to_string(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Reads a little-endian f32 tensor's values.
pub fn f32_values(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype == Dtype::F32).then(|| {
        t.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_tensors_and_meta() {
        let t = f32_tensor("x", &[1, 2], &[1.5, -2.0]);
        let meta = RequestMeta {
            id: Some("r1".into()),
            seq: Some(7),
            ts_us: Some(42),
        };
        let bytes = encode_request(std::slice::from_ref(&t), &meta);
        let (ts, m) = decode_safetensors(&bytes, 100).unwrap();
        assert_eq!(ts, vec![t]);
        assert_eq!(m, meta);
    }

    #[test]
    fn garbage_and_truncation_are_bad_payload() {
        let bytes = encode_request(&[f32_tensor("x", &[4], &[1.0; 4])], &RequestMeta::default());
        for b in [
            &b"hello world"[..],
            &bytes[..bytes.len() - 3],
            &[0xff; 8][..],
        ] {
            let (e, _) = decode_safetensors(b, 100).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadPayload, "{e}");
        }
    }

    #[test]
    fn element_limit_is_enforced() {
        let bytes = encode_request(&[f32_tensor("x", &[8], &[0.0; 8])], &RequestMeta::default());
        assert_eq!(
            decode_safetensors(&bytes, 7).unwrap_err().0.code,
            ErrorCode::TooManyElements
        );
    }

    #[test]
    fn raw_size_must_match_shape() {
        assert!(decode_raw(&[0; 16], "x", Dtype::F32, &[1, 4]).is_ok());
        assert_eq!(
            decode_raw(&[0; 12], "x", Dtype::F32, &[1, 4])
                .unwrap_err()
                .code,
            ErrorCode::WrongShape
        );
    }

    #[test]
    fn attachment_forms() {
        assert_eq!(
            decode_attachment(b"abc").unwrap().id.as_deref(),
            Some("abc")
        );
        let m = decode_attachment(b"id=a;seq=3;ts_us=9").unwrap();
        assert_eq!(
            (m.id.as_deref(), m.seq, m.ts_us),
            (Some("a"), Some(3), Some(9))
        );
        assert_eq!(
            decode_attachment(b"seq=x").unwrap_err().0.code,
            ErrorCode::BadPayload
        );
        let (_, m) = decode_attachment(b"id=k;seq=x").unwrap_err();
        assert_eq!(m.id.as_deref(), Some("k"), "the id survives a later error");
    }
}
