//! Answer-stage behaviour: YOLO decoding in both layouts against boxes the
//! test places, NMS rules, letterbox un-mapping, top-k, and the streaming
//! VAD tracker against an offline segmenter over random probabilities.

use super::*;
use crate::infer::pre::{ResizeMode, Transform, plan};

fn bb(x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
    BBox { x1, y1, x2, y2 }
}

fn cfg(layout: YoloLayout) -> DetectConfig {
    DetectConfig {
        layout,
        confidence: 0.25,
        iou: 0.45,
        max_detections: 100,
        class_agnostic: false,
        labels: None,
    }
}

/// (cx, cy, w, h, class scores) per box → `[1, 4+C, N]` (v8) values.
fn v8(boxes: &[([f32; 4], Vec<f32>)]) -> (Vec<f32>, Vec<usize>) {
    let (n, c) = (boxes.len(), boxes[0].1.len());
    let mut v = vec![0.0; (4 + c) * n];
    for (i, (b, s)) in boxes.iter().enumerate() {
        for a in 0..4 {
            v[a * n + i] = b[a];
        }
        for (k, s) in s.iter().enumerate() {
            v[(4 + k) * n + i] = *s;
        }
    }
    (v, vec![1, 4 + c, n])
}

/// Same boxes in `[1, N, 5+C]` (v5): objectness `obj`, class scores / obj.
fn v5(boxes: &[([f32; 4], Vec<f32>)], obj: f32) -> (Vec<f32>, Vec<usize>) {
    let c = boxes[0].1.len();
    let v = boxes
        .iter()
        .flat_map(|(b, s)| {
            b.iter()
                .copied()
                .chain([obj])
                .chain(s.iter().map(|x| x / obj))
                .collect::<Vec<_>>()
        })
        .collect();
    (v, vec![1, boxes.len(), 5 + c])
}

fn scene() -> Vec<([f32; 4], Vec<f32>)> {
    vec![
        ([100.0, 100.0, 40.0, 40.0], vec![0.9, 0.1, 0.0]),
        ([104.0, 102.0, 40.0, 40.0], vec![0.8, 0.0, 0.1]), // overlaps the first, same class: suppressed
        ([104.0, 102.0, 40.0, 40.0], vec![0.0, 0.7, 0.0]), // same place, other class: kept
        ([300.0, 200.0, 20.0, 60.0], vec![0.0, 0.0, 0.6]),
        ([500.0, 500.0, 10.0, 10.0], vec![0.2, 0.1, 0.1]), // under the threshold
    ]
}

#[test]
fn iou_and_nms_rules() {
    let a = bb(0.0, 0.0, 10.0, 10.0);
    assert_eq!(iou(&a, &a), 1.0);
    assert_eq!(iou(&a, &bb(20.0, 20.0, 30.0, 30.0)), 0.0);
    assert!((iou(&a, &bb(5.0, 0.0, 15.0, 10.0)) - 1.0 / 3.0).abs() < 1e-6);
    assert_eq!(iou(&a, &bb(3.0, 3.0, 3.0, 9.0)), 0.0, "no area, no overlap");
    let boxes = [a, bb(1.0, 1.0, 11.0, 11.0), bb(1.0, 0.0, 11.0, 10.0)];
    let scores = [0.5, 0.9, 0.7];
    assert_eq!(nms(&boxes, &scores, &[0, 0, 1], 0.5, false, 10), vec![1, 2]);
    assert_eq!(nms(&boxes, &scores, &[0, 0, 1], 0.5, true, 10), vec![1]);
    assert_eq!(nms(&boxes, &scores, &[0, 1, 2], 0.5, false, 2), vec![1, 2]);
}

#[test]
fn yolov8_and_yolov5_layouts_decode_the_same_scene() {
    let id = Transform::identity(640, 640);
    let (v, s) = v8(&scene());
    let a = decode_yolo(&v, &s, &cfg(YoloLayout::V8), &id).unwrap();
    let got: Vec<(usize, f32)> = a.detections.iter().map(|d| (d.class_id, d.score)).collect();
    assert_eq!(got, vec![(0, 0.9), (1, 0.7), (2, 0.6)]);
    assert_eq!(a.detections[0].bbox, bb(80.0, 80.0, 120.0, 120.0));
    assert_eq!(a.detections[2].bbox, bb(290.0, 170.0, 310.0, 230.0));
    let (v, s) = v5(&scene(), 0.95);
    let b = decode_yolo(&v, &s, &cfg(YoloLayout::V5), &id).unwrap();
    assert_eq!(b.detections.len(), 3);
    for (x, y) in a.detections.iter().zip(&b.detections) {
        assert_eq!((x.class_id, x.bbox), (y.class_id, y.bbox));
        assert!((x.score - y.score).abs() < 1e-6);
    }
    let mut agnostic = cfg(YoloLayout::V8);
    agnostic.class_agnostic = true;
    let (v, s) = v8(&scene());
    assert_eq!(
        decode_yolo(&v, &s, &agnostic, &id)
            .unwrap()
            .detections
            .len(),
        2
    );
}

#[test]
fn letterboxed_boxes_map_back_to_source_pixels_and_clip() {
    let t = plan(ResizeMode::Letterbox { pad: 114 }, (1920, 1080), (640, 640)).transform;
    let boxes = vec![
        ([320.0, 320.0, 64.0, 64.0], vec![0.9]),
        ([630.0, 320.0, 40.0, 40.0], vec![0.8]), // crosses the right edge
        ([320.0, 60.0, 30.0, 30.0], vec![0.7]),  // inside the top margin only
    ];
    let (v, s) = v8(&boxes);
    let d = decode_yolo(&v, &s, &cfg(YoloLayout::V8), &t).unwrap();
    assert_eq!((d.width, d.height), (1920, 1080));
    assert_eq!(
        d.detections.len(),
        2,
        "the margin box has no part in the frame"
    );
    let b = d.detections[0].bbox;
    assert!((b.x1 - 864.0).abs() < 1e-3 && (b.x2 - 1056.0).abs() < 1e-3);
    assert!((b.y1 - 444.0).abs() < 1e-3 && (b.y2 - 636.0).abs() < 1e-3);
    assert_eq!(d.detections[1].bbox.x2, 1920.0);
}

#[test]
fn bad_detector_outputs_are_errors() {
    let id = Transform::identity(64, 64);
    let c = cfg(YoloLayout::V8);
    assert!(
        decode_yolo(&[0.0; 12], &[1, 4, 3], &c, &id).is_err(),
        "no class rows"
    );
    assert!(
        decode_yolo(&[0.0; 10], &[1, 5, 3], &c, &id).is_err(),
        "length mismatch"
    );
    assert!(
        decode_yolo(&[0.0; 15], &[1, 1, 5, 3], &c, &id).is_err(),
        "rank 4"
    );
    let mut labelled = c.clone();
    labelled.labels = Some(vec!["a".into(), "b".into()]);
    assert_eq!(
        decode_yolo(&[0.0; 15], &[1, 5, 3], &labelled, &id)
            .unwrap_err()
            .code(),
        "bad_output"
    );
    let (mut v, s) = v8(&scene());
    v.iter_mut().for_each(|x| *x = f32::NAN);
    assert!(decode_yolo(&v, &s, &c, &id).unwrap().detections.is_empty());
}

#[test]
fn labels_files_and_config() {
    assert_eq!(
        parse_labels("cat\ndog\n\n", "t").unwrap(),
        vec!["cat", "dog"]
    );
    assert!(parse_labels("cat\n\ndog", "t").is_err());
    assert!(parse_labels("\n\n", "t").is_err());
    let dir = std::env::temp_dir().join(format!("reflexd-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("l.txt"), "red\ngreen\nblue\n").unwrap();
    let raw: RawDetect =
        toml::from_str("layout = \"yolov5\"\nlabels = \"l.txt\"\niou = 0.6").unwrap();
    let c = DetectConfig::from_raw(&raw, &dir).unwrap();
    assert_eq!(
        (c.layout, c.iou, c.labels.as_ref().unwrap().len()),
        (YoloLayout::V5, 0.6, 3)
    );
    let raw: RawDetect = toml::from_str("labels = \"missing.txt\"").unwrap();
    assert_eq!(
        DetectConfig::from_raw(&raw, &dir).unwrap_err().key,
        "labels"
    );
    let raw: RawDetect = toml::from_str("confidence = 1.5").unwrap();
    assert_eq!(
        DetectConfig::from_raw(&raw, &dir).unwrap_err().key,
        "confidence"
    );
    assert!(toml::from_str::<RawDetect>("treshold = 0.5").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn top_k_orders_and_labels() {
    let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let c = ClassConfig {
        top_k: 2,
        softmax: false,
        min_score: None,
        labels: Some(labels),
    };
    let r = top_k(&[0.1, 0.7, f32::NAN, 0.7], &c).unwrap();
    assert_eq!(
        r.iter()
            .map(|x| (x.class_id, x.label.as_deref()))
            .collect::<Vec<_>>(),
        vec![(1, Some("b")), (3, Some("d"))]
    );
    assert!(top_k(&[0.1, 0.2], &c).is_err(), "label count mismatch");
    let c = ClassConfig {
        top_k: 10,
        softmax: true,
        min_score: None,
        labels: None,
    };
    let r = top_k(&[1.0, 3.0, 2.0], &c).unwrap();
    assert_eq!(
        r.iter().map(|x| x.class_id).collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    let sum: f32 = r.iter().map(|x| x.score).sum();
    assert!((sum - 1.0).abs() < 1e-6);
    assert!((r[0].score - 3f32.exp() / (1f32.exp() + 2f32.exp() + 3f32.exp())).abs() < 1e-6);
    let c = ClassConfig {
        top_k: 3,
        softmax: false,
        min_score: Some(0.5),
        labels: None,
    };
    assert_eq!(top_k(&[0.9, 0.2, 0.6], &c).unwrap().len(), 2);
    assert!(top_k(&[], &c).is_err());
    let json = serde_json::to_string(&top_k(&[0.9], &c).unwrap()).unwrap();
    assert_eq!(json, r#"[{"class_id":0,"score":0.9}]"#);
}

const FRAME: u64 = 32_000;

fn vad_cfg(min_speech_ms: u64, min_silence_ms: u64, pad_ms: u64) -> VadConfig {
    VadConfig::from_raw(&RawVad {
        threshold: Some(0.5),
        neg_threshold: Some(0.35),
        min_speech_ms: Some(min_speech_ms),
        min_silence_ms: Some(min_silence_ms),
        speech_pad_ms: Some(pad_ms),
        frame_ms: None,
    })
    .unwrap()
}

/// Feeds `probs` as consecutive 32 ms frames; returns all events, plus the
/// one from `finish` at the end of the audio.
fn stream(cfg: VadConfig, probs: &[f32]) -> Vec<VadEvent> {
    let mut t = VadTracker::new(cfg);
    let mut events: Vec<VadEvent> = probs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| t.push(*p, i as u64 * FRAME, FRAME).events)
        .collect();
    events.extend(t.finish(probs.len() as u64 * FRAME));
    events
}

/// Offline segmentation written as silero-vad's loop (whole array at once,
/// no padding): the streaming tracker must find the same segments.
fn offline(cfg: &VadConfig, probs: &[f32]) -> Vec<(u64, u64)> {
    let (mut segments, mut start, mut temp_end) = (Vec::new(), None::<u64>, None::<u64>);
    for (i, &p) in probs.iter().enumerate() {
        let t = i as u64 * FRAME;
        if p >= cfg.threshold {
            temp_end = None;
            start.get_or_insert(t);
        } else if p < cfg.neg_threshold
            && let Some(s) = start
        {
            let te = *temp_end.get_or_insert(t);
            if t + FRAME - te >= cfg.min_silence_us {
                if te - s >= cfg.min_speech_us {
                    segments.push((s, te));
                }
                (start, temp_end) = (None, None);
            }
        }
    }
    if let Some(s) = start {
        let end = temp_end.unwrap_or(probs.len() as u64 * FRAME);
        if end - s >= cfg.min_speech_us {
            segments.push((s, end));
        }
    }
    segments
}

#[test]
fn vad_emits_start_after_min_speech_and_end_after_min_silence() {
    let c = vad_cfg(96, 64, 0);
    let mut t = VadTracker::new(c);
    let probs = [0.1, 0.9, 0.9, 0.4, 0.9, 0.1, 0.1, 0.1];
    let answers: Vec<VadAnswer> = probs
        .iter()
        .enumerate()
        .map(|(i, p)| t.push(*p, i as u64 * FRAME, FRAME))
        .collect();
    assert!(answers[1].events.is_empty() && !answers[1].speaking);
    // 0.4 lies between the thresholds: speech goes on, so the third speech frame confirms it.
    assert_eq!(
        answers[3].events,
        vec![VadEvent::SpeechStart { start_us: FRAME }]
    );
    assert!(answers[3].speaking);
    assert!(
        answers[5].events.is_empty(),
        "one silent frame is not yet min_silence"
    );
    assert_eq!(
        answers[6].events,
        vec![VadEvent::SpeechEnd {
            start_us: FRAME,
            end_us: 5 * FRAME
        }]
    );
    assert!(!answers[7].speaking && answers[7].events.is_empty());
}

#[test]
fn vad_drops_short_bursts_and_bridges_short_gaps_and_pads() {
    let c = vad_cfg(96, 96, 30);
    assert!(
        stream(c, &[0.9, 0.9, 0.1, 0.1, 0.1, 0.1]).is_empty(),
        "64 ms of speech < min_speech"
    );
    let ev = stream(c, &[0.1, 0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]);
    assert_eq!(
        ev,
        vec![
            VadEvent::SpeechStart {
                start_us: FRAME - 30_000
            },
            VadEvent::SpeechEnd {
                start_us: FRAME - 30_000,
                end_us: 7 * FRAME + 30_000
            },
        ],
        "a 64 ms gap < min_silence does not split the segment"
    );
    let open = stream(c, &[0.9; 6]);
    assert_eq!(
        open.last(),
        Some(&VadEvent::SpeechEnd {
            start_us: 0,
            end_us: 6 * FRAME + 30_000
        }),
        "finish closes an open segment"
    );
    let json = serde_json::to_string(&open[0]).unwrap();
    assert_eq!(json, r#"{"event":"speech_start","start_us":0}"#);
}

#[test]
fn vad_streaming_matches_offline_segmentation() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    for case in 0..200 {
        let c = vad_cfg(32 * (case % 8), 32 * (case % 5 + 1), 0);
        // Runs of similar probabilities, like real speech.
        let mut probs = Vec::new();
        while probs.len() < 300 {
            let level = rand();
            let len = 1 + (rand() * 12.0) as usize;
            probs.extend((0..len).map(|_| (level + 0.2 * (rand() - 0.5)).clamp(0.0, 1.0)));
        }
        let ends: Vec<(u64, u64)> = stream(c, &probs)
            .into_iter()
            .filter_map(|e| match e {
                VadEvent::SpeechEnd { start_us, end_us } => Some((start_us, end_us)),
                _ => None,
            })
            .collect();
        assert_eq!(ends, offline(&c, &probs), "case {case}");
    }
}

#[test]
fn vad_config_is_validated() {
    assert!(
        VadConfig::from_raw(&RawVad {
            threshold: Some(1.5),
            ..Default::default()
        })
        .is_err()
    );
    let e = VadConfig::from_raw(&RawVad {
        threshold: Some(0.3),
        neg_threshold: Some(0.4),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.key, "neg_threshold");
    let d = VadConfig::default();
    assert_eq!(
        (
            d.threshold,
            d.neg_threshold,
            d.min_speech_us,
            d.min_silence_us
        ),
        (0.5, 0.35, 250_000, 100_000)
    );
}
