//! The answer message (docs/answers.md): what a pipeline with an answer
//! stage publishes instead of safetensors (`outputs = "answer"`). One JSON
//! object per request: the same metadata a prediction carries (numbers as
//! JSON numbers here), a chain's per-stage timing, and the answer object
//! itself, which the worker serialises (this layer does not know answer
//! kinds). Written in one buffer; the pipeline's fixed metadata is copied
//! in pre-serialised, as for predictions.

use std::io::Write as _;

use super::reply::ReplyMeta;

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// Encodes `{<metadata>, "stages": [...], "answer": {...}}`. `stages` and
/// `answer` are JSON texts (an array and an object); `meta.extra` pairs are
/// written as strings.
pub fn encode_answer(m: &ReplyMeta, stages: Option<&str>, answer: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(320 + answer.len() + stages.map_or(0, str::len));
    buf.push(b'{');
    buf.extend_from_slice(m.fixed.as_bytes());
    let num = |buf: &mut Vec<u8>, k: &str, v: u64| {
        let _ = write!(buf, "\"{k}\":{v},");
    };
    if let Some(id) = m.id {
        buf.extend_from_slice(b"\"id\":");
        json_str(&mut buf, id);
        buf.push(b',');
    }
    if let Some(seq) = m.seq {
        num(&mut buf, "seq", seq);
    }
    if let Some(ts) = m.ts_us {
        num(&mut buf, "ts_us", ts);
    }
    buf.extend_from_slice(b"\"stream\":");
    json_str(&mut buf, m.stream);
    buf.push(b',');
    if let Some(b) = m.batch {
        num(&mut buf, "batch", b as u64);
    }
    num(&mut buf, "recv_order", m.recv_order);
    num(&mut buf, "run_order", m.run_order);
    num(&mut buf, "queue_us", m.queue_us);
    num(&mut buf, "inference_us", m.inference_us);
    num(&mut buf, "e2e_us", m.e2e_us);
    for (k, v) in m.extra {
        json_str(&mut buf, k);
        buf.push(b':');
        json_str(&mut buf, v);
        buf.push(b',');
    }
    let _ = write!(buf, "\"late\":{},", m.late);
    if let Some(s) = stages {
        buf.extend_from_slice(b"\"stages\":");
        buf.extend_from_slice(s.as_bytes());
        buf.push(b',');
    }
    buf.extend_from_slice(b"\"answer\":");
    buf.extend_from_slice(answer.as_bytes());
    buf.push(b'}');
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::reply::fixed_meta;

    #[test]
    fn answer_message_is_one_json_object_with_numbers_and_the_answer() {
        let fixed = fixed_meta(&[("pipeline", "cam"), ("worker", "1")]);
        let m = ReplyMeta {
            fixed: &fixed,
            id: Some("f\"1"),
            seq: Some(7),
            ts_us: None,
            stream: "front",
            batch: None,
            recv_order: 3,
            run_order: 4,
            queue_us: 10,
            inference_us: 20,
            e2e_us: 40,
            late: true,
            extra: &[("pre_us", "5")],
        };
        let bytes = encode_answer(&m, Some(r#"[{"pipeline":"a"}]"#), r#"{"kind":"vad"}"#);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["pipeline"], "cam");
        assert_eq!(v["id"], "f\"1");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["e2e_us"], 40);
        assert_eq!(v["late"], true);
        assert_eq!(v["pre_us"], "5");
        assert_eq!(v["stages"][0]["pipeline"], "a");
        assert_eq!(v["answer"]["kind"], "vad");
        assert!(v.get("ts_us").is_none());
    }
}
