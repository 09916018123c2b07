//! reflexd-sim's printer: what it does with each message reflexd publishes
//! for the expected pipelines (JSON answers, safetensors predictions, JSON
//! errors), one line per reply with the daemon's timings next to the round
//! trip measured by the simulator, and the per-pipeline summary at the end.
//! It sits after the zenoh callback's queue, on its own task.

use std::collections::{BTreeMap, HashMap};

use reflexd::wire;
use serde_json::Value;
use tokio::time::Instant;

/// Printing threshold for pipelines that publish a raw speech probability
/// (no answer stage); with one, the daemon's own `speaking` is shown.
const SPEECH_THRESHOLD: f32 = 0.5;

/// One message from `reflexd/**`, stamped on arrival in the zenoh callback.
pub struct Arrival {
    pub key: String,
    pub bytes: Vec<u8>,
    pub at_us: u64,
}

#[derive(Default)]
pub struct PipeStats {
    pub predictions: u64,
    rtt_ms: Vec<f64>,
    infer_ms: Vec<f64>,
    errors: BTreeMap<String, u64>,
    provider: String,
}

/// The printer: owns all client-side statistics.
pub struct Report {
    start: Instant,
    /// `start` on the wall clock (µs since the epoch): speech events are
    /// printed relative to it.
    start_us: u64,
    vad_every: u64,
    pub pipes: BTreeMap<String, PipeStats>,
    speaking: HashMap<String, bool>,
    /// Per pipeline/stream: the id and text lines of the last OCR answer.
    last_text: HashMap<String, (String, Vec<String>)>,
}

impl Report {
    /// `start_us`: `start` on the wall clock.
    pub fn new(start: Instant, start_us: u64, vad_every: u64) -> Self {
        Report {
            start,
            start_us,
            vad_every,
            pipes: BTreeMap::new(),
            speaking: HashMap::new(),
            last_text: HashMap::new(),
        }
    }

    pub fn on_error(&mut self, a: &Arrival) {
        let v: serde_json::Value = serde_json::from_slice(&a.bytes).unwrap_or_default();
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        let (pipeline, code) = (s("pipeline"), s("code"));
        let st = self.pipes.entry(pipeline.clone()).or_default();
        *st.errors.entry(code.clone()).or_default() += 1;
        println!(
            "[{:6.2}s] {pipeline:8} {:6} {:10} ERROR {code}: {}",
            self.start.elapsed().as_secs_f64(),
            s("stream"),
            s("id"),
            s("message")
        );
    }

    /// A safetensors prediction (a pipeline without an answer stage).
    pub fn on_prediction(&mut self, a: &Arrival) {
        let (tensors, meta) = match wire::decode_output(&a.bytes) {
            Ok(x) => x,
            Err(e) => return println!("{}: undecodable prediction: {e}", a.key),
        };
        let get = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
        let us = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok());
        let e = Envelope::new(
            a,
            [get("pipeline"), get("stream"), get("id"), get("provider")],
            us,
        );
        let n = self.record(&e);
        let values = tensors
            .first()
            .and_then(reflexd::tensor::f32_values)
            .unwrap_or_default();
        // `outputs = "both"`: the answer stage's JSON rides in the metadata.
        let answer: Value = meta
            .get("answer")
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let summary = match values.as_slice() {
            [p] => {
                let speech = answer["speaking"]
                    .as_bool()
                    .unwrap_or(*p > SPEECH_THRESHOLD);
                let events = answer["events"].as_array().is_some_and(|e| !e.is_empty());
                if !self.vad_visible(&e, speech, n) && !events {
                    return;
                }
                prob_bar(*p, speech)
            }
            [] => format!("{} tensor(s), not f32", tensors.len()),
            v => format!(
                "{} values, max {:.2}",
                v.len(),
                v.iter().copied().fold(f32::MIN, f32::max)
            ),
        };
        self.print_row(&e, &summary);
        self.print_events(&answer);
    }

    /// A JSON answer: speech events (VAD answer stage) or text lines (OCR).
    pub fn on_answer(&mut self, a: &Arrival) {
        let v: Value = match serde_json::from_slice(&a.bytes) {
            Ok(v) => v,
            Err(e) => return println!("{}: undecodable answer: {e}", a.key),
        };
        let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        let ans = &v["answer"];
        if let Some(reason) = v["reason"].as_str() {
            // A segment closed without a frame (stream idle, daemon stopping).
            println!(
                "[{:6.2}s] {:8} {:6} ({reason})",
                self.start.elapsed().as_secs_f64(),
                text("pipeline"),
                text("stream")
            );
            return self.print_events(ans);
        }
        let e = Envelope::new(
            a,
            [
                text("pipeline"),
                text("stream"),
                text("id"),
                text("provider"),
            ],
            |k| v[k].as_u64(),
        );
        let n = self.record(&e);
        match ans["kind"].as_str() {
            Some("vad") => {
                let p = ans["probability"].as_f64().unwrap_or(f64::NAN) as f32;
                let speaking = ans["speaking"].as_bool().unwrap_or(false);
                let events = ans["events"].as_array().is_some_and(|e| !e.is_empty());
                if self.vad_visible(&e, speaking, n) || events {
                    self.print_row(&e, &prob_bar(p, speaking));
                    self.print_events(ans);
                }
            }
            Some("ocr") => {
                let lines = ans["lines"].as_array().map_or(&[][..], Vec::as_slice);
                let summary = format!(
                    "{} text line(s) in {}×{} u8 frame",
                    lines.len(),
                    ans["width"],
                    ans["height"]
                );
                self.print_row(&e, &summary);
                // A camera looking at the same scene reads the same lines:
                // they are printed when they change, the timing every frame.
                let texts: Vec<&str> = lines.iter().filter_map(|l| l["text"].as_str()).collect();
                let key = format!("{}/{}", e.pipeline, e.stream);
                match self.last_text.get(&key) {
                    Some((id, last)) if *last == texts => {
                        println!("{:11}(the same text lines as {id})", "")
                    }
                    _ => print_ocr_lines(lines),
                }
                print_stages(&v["stages"]);
                let texts = texts.into_iter().map(str::to_string).collect();
                self.last_text.insert(key, (e.id.clone(), texts));
            }
            kind => self.print_row(&e, &format!("{} answer", kind.unwrap_or("?"))),
        }
    }

    /// Counts a reply in its pipeline's statistics; returns the count.
    fn record(&mut self, e: &Envelope) -> u64 {
        let st = self.pipes.entry(e.pipeline.clone()).or_default();
        st.predictions += 1;
        st.provider = e.provider.clone();
        st.rtt_ms.extend(e.rtt);
        st.infer_ms.extend(e.infer);
        st.predictions
    }

    /// A per-frame speech line is shown every `vad_every`th frame and
    /// whenever the state changes.
    fn vad_visible(&mut self, e: &Envelope, speech: bool, n: u64) -> bool {
        let stream_key = format!("{}/{}", e.pipeline, e.stream);
        let changed = self.speaking.insert(stream_key, speech) != Some(speech);
        changed || n.is_multiple_of(self.vad_every.max(1))
    }

    fn print_row(&self, e: &Envelope, summary: &str) {
        let f = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
        println!(
            "[{:6.2}s] {:8} {:6} {:10} {summary:44} queue {:>7} infer {:>7} e2e {:>7} ms {:4} | rtt {:>7} ms",
            self.start.elapsed().as_secs_f64(),
            e.pipeline,
            e.stream,
            e.id,
            f(e.queue),
            f(e.infer),
            f(e.e2e),
            e.provider,
            f(e.rtt),
        );
    }

    /// Speech segments, in seconds since the simulator started (the frames'
    /// `ts_us` is the stream's clock).
    fn print_events(&self, ans: &Value) {
        let at = |k: &str, ev: &Value| {
            ev[k]
                .as_u64()
                .map_or(f64::NAN, |t| (t as f64 - self.start_us as f64) / 1e6)
        };
        for ev in ans["events"].as_array().into_iter().flatten() {
            match ev["event"].as_str() {
                Some("speech_start") => {
                    println!(
                        "{:11}>> speech_start: speech began at {:.2} s",
                        "",
                        at("start_us", ev)
                    )
                }
                Some("speech_end") => {
                    let (s, e) = (at("start_us", ev), at("end_us", ev));
                    println!(
                        "{:11}<< speech_end: segment {s:.2}-{e:.2} s ({:.2} s)",
                        "",
                        e - s
                    )
                }
                _ => println!("{:11}event {ev}", ""),
            }
        }
    }
}

/// The fields every printed reply row shows, from a prediction's metadata
/// or an answer's JSON.
struct Envelope {
    pipeline: String,
    stream: String,
    id: String,
    provider: String,
    queue: Option<f64>,
    infer: Option<f64>,
    e2e: Option<f64>,
    /// Publish (`ts_us`, this host's clock) → arrival here.
    rtt: Option<f64>,
}

impl Envelope {
    /// `names`: pipeline, stream, id, provider; `us` reads a µs field.
    fn new(a: &Arrival, names: [String; 4], us: impl Fn(&str) -> Option<u64>) -> Self {
        let [pipeline, stream, id, provider] = names;
        let ms = |k: &str| us(k).map(|v| v as f64 / 1000.0);
        Envelope {
            pipeline,
            stream,
            id,
            provider,
            queue: ms("queue_us"),
            infer: ms("inference_us"),
            e2e: ms("e2e_us"),
            rtt: us("ts_us").map(|t| a.at_us.saturating_sub(t) as f64 / 1000.0),
        }
    }
}

fn prob_bar(p: f32, speech: bool) -> String {
    let bar = (p.clamp(0.0, 1.0) * 10.0).round() as usize;
    format!(
        "p={p:.2} |{}{}| {}",
        "#".repeat(bar),
        "-".repeat(10 - bar),
        if speech { "SPEECH " } else { "silence" }
    )
}

/// An OCR answer's text lines: text, confidence, box corners in the frame's
/// pixels.
fn print_ocr_lines(lines: &[Value]) {
    for l in lines {
        let corners: Vec<String> = l["box"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "({:.0},{:.0})",
                    p[0].as_f64().unwrap_or(f64::NAN),
                    p[1].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        println!(
            "{:11}{:28} conf {:.3}  box {}",
            "",
            format!("{:?}", l["text"].as_str().unwrap_or("?")),
            l["confidence"].as_f64().unwrap_or(f64::NAN),
            corners.join(" ")
        );
    }
}

/// Where a chained answer's time went, stage by stage.
fn print_stages(stages: &Value) {
    let ms = |st: &Value, k: &str| st[k].as_u64().unwrap_or(0) as f64 / 1000.0;
    let parts: Vec<String> = stages
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| {
            format!(
                "{} {:.1} ms (pre {:.1}, infer {:.1} in {} run(s), post {:.1})",
                st["pipeline"].as_str().unwrap_or("?"),
                ms(st, "pre_us") + ms(st, "inference_us") + ms(st, "post_us"),
                ms(st, "pre_us"),
                ms(st, "inference_us"),
                st["runs"],
                ms(st, "post_us"),
            )
        })
        .collect();
    if !parts.is_empty() {
        println!("{:11}stages: {}", "", parts.join(" | "));
    }
}

/// Nearest-rank percentile, formatted; "-" when there are no samples.
fn percentile(v: &[f64], p: f64) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).max(1) - 1;
    v.get(i).map_or("-".into(), |x| format!("{x:.2}"))
}

impl Report {
    pub fn summary(&self, dropped: u64) {
        println!(
            "{:10} {:>6} {:>7} {:>12} {:>12} {:>13}  provider",
            "pipeline", "preds", "errors", "rtt p50 ms", "rtt p99 ms", "infer p50 ms"
        );
        for (name, st) in &self.pipes {
            println!(
                "{name:10} {:>6} {:>7} {:>12} {:>12} {:>13}  {}",
                st.predictions,
                st.errors.values().sum::<u64>(),
                percentile(&st.rtt_ms, 0.5),
                percentile(&st.rtt_ms, 0.99),
                percentile(&st.infer_ms, 0.5),
                st.provider
            );
            for (code, k) in &st.errors {
                println!("{:10}   {k} × {code}", "");
            }
        }
        if dropped > 0 {
            println!(
                "({dropped} replies arrived faster than they could be printed and were not counted)"
            );
        }
    }
}
