//! Requests into the daemon: safetensors and raw tensor messages and the
//! `key=value` attachment of raw messages (docs/protocol.md § Requests).
//! Decoding is zero-copy: the decoded tensors share the received buffer
//! ([`Bytes`]), so the only copy of a frame's bytes is the one into the
//! runtime's input tensor. Each tensor's element count is bounded here; the
//! payload size is bounded by the caller before decoding.

use std::collections::HashMap;

use bytes::Bytes;
use safetensors::tensor::{SafeTensors, View};

use super::{Failed, MAX_ID_LEN, META_ID, META_SEQ, META_TS, RequestMeta, bad, from_st_dtype};
use crate::error::{ErrorCode, Rejection};
use crate::tensor::{Dtype, Tensor};

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

/// Parses a safetensors message, reading the header once. Tensors point
/// into `bytes` (no copy). Errors found after the metadata was read carry it.
pub fn decode_safetensors(
    bytes: &Bytes,
    max_elements: usize,
) -> Result<(Vec<Tensor>, RequestMeta), Failed> {
    let (n, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        (
            bad(format!("not a safetensors message: {e}")),
            RequestMeta::default(),
        )
    })?;
    let meta = meta_from_map(header.metadata().as_ref())?;
    let base = 8 + n;
    let names = header.offset_keys();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let info = header
            .info(&name)
            .expect("offset_keys come from the header");
        let fail = |code, msg: String| (Rejection::new(code, msg), meta.clone());
        let dtype = from_st_dtype(info.dtype).ok_or_else(|| {
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
            data: bytes.slice(base + start..base + end),
            name,
            dtype,
        });
    }
    Ok((tensors, meta))
}

/// Parses a `raw` message: exactly one tensor's bytes with config-fixed dtype
/// and shape. The request id, if any, comes from the zenoh attachment.
pub fn decode_raw(
    bytes: Bytes,
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
    Ok(Tensor::new(name, dtype, shape.to_vec(), bytes))
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

/// A tensor as safetensors serialises it.
pub(crate) struct StView<'a>(pub &'a Tensor);

impl View for StView<'_> {
    fn dtype(&self) -> safetensors::tensor::Dtype {
        super::st_dtype(self.0.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Builds a safetensors message with arbitrary string metadata (clients
/// and tests that need metadata [`encode_request`] would not write).
pub fn encode_message(tensors: &[Tensor], metadata: HashMap<String, String>) -> Vec<u8> {
    safetensors::serialize(
        tensors.iter().map(|t| (t.name.as_str(), StView(t))),
        Some(metadata),
    )
    .expect("tensors built by the caller have consistent shapes")
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
    encode_message(tensors, map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::f32_tensor;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn request_round_trip_keeps_tensors_and_meta() {
        let t = f32_tensor("x", &[1, 2], &[1.5, -2.0]);
        let meta = RequestMeta {
            id: Some("r1".into()),
            seq: Some(7),
            ts_us: Some(42),
        };
        let bytes = Bytes::from(encode_request(std::slice::from_ref(&t), &meta));
        let (ts, m) = decode_safetensors(&bytes, 100).unwrap();
        assert_eq!(ts, vec![t]);
        assert_eq!(m, meta);
    }

    #[test]
    fn garbage_and_truncation_are_bad_payload() {
        let bytes = encode_request(&[f32_tensor("x", &[4], &[1.0; 4])], &RequestMeta::default());
        for x in [
            &b"hello world"[..],
            &bytes[..bytes.len() - 3],
            &[0xff; 8][..],
        ] {
            let (e, _) = decode_safetensors(&b(x), 100).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadPayload, "{e}");
        }
    }

    #[test]
    fn element_limit_is_enforced() {
        let bytes = encode_request(&[f32_tensor("x", &[8], &[0.0; 8])], &RequestMeta::default());
        assert_eq!(
            decode_safetensors(&b(&bytes), 7).unwrap_err().0.code,
            ErrorCode::TooManyElements
        );
    }

    #[test]
    fn raw_size_must_match_shape() {
        assert!(decode_raw(b(&[0; 16]), "x", Dtype::F32, &[1, 4]).is_ok());
        assert_eq!(
            decode_raw(b(&[0; 12]), "x", Dtype::F32, &[1, 4])
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
