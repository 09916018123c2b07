//! reflexd as a ROS 2 node, checked against a stand-in ROS node whose codec
//! nobody here wrote (tests/py/ros2_peer.py: rosbags CDR, eclipse-zenoh
//! attachments): tensor pipelines read `Float32MultiArray` on rmw_zenoh and
//! bridge keys and answer as `Float32MultiArray` / `Image` with valid
//! attachments; bad messages are answered on the ROS error topic; the graph
//! tokens parse as rmw_zenoh's graph cache parses them and disappear at
//! shutdown; `<node>/describe` lists every key and topic. Loopback only.

mod common;

use std::time::Duration;

use common::ros2::RosPeer;
use common::*;
use reflexd::ros2::RosType;
use reflexd::ros2::keyexpr::rmw_zenoh_key;
use reflexd::ros2::liveliness::{EntityKind, parse_token};
use reflexd::ros2::publisher::gid_for_token;
use reflexd::wire::describe::Description;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
const F32MA: &str = "std_msgs/msg/Float32MultiArray";

fn config() -> String {
    let affine = test_model("affine.onnx");
    format!(
        r#"
        [ros2]
        node = "reflexd_test"
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        [pipeline.ros2]
        input = {{ topic = "/reflexd/in", type = "{F32MA}" }}
        output = {{ topic = "/reflexd/out", type = "{F32MA}" }}
        error = {{ topic = "/reflexd/errors" }}
        [[pipeline]]
        name = "map"
        model = "{affine}"
        input = "t/map/*"
        output = "t/out/map"
        [pipeline.ros2]
        input = {{ topic = "/bridge/in", type = "{F32MA}", flavour = "bridge", namespace = "bot1" }}
        output = {{ topic = "/reflexd/map", type = "sensor_msgs/msg/Image" }}
        "#
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The `MP`/`MS` token of `topic` among `tokens`.
fn token_of<'a>(tokens: &'a [String], kind: EntityKind, topic: &str) -> &'a str {
    tokens
        .iter()
        .find(|t| {
            let p = parse_token(t).unwrap();
            p.kind == kind && p.topic.is_some_and(|x| x.name == topic)
        })
        .unwrap_or_else(|| panic!("no {kind:?} token for {topic} in {tokens:#?}"))
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_topics_round_trip_through_a_rosbags_node() {
    let (daemon, port) = start(&config()).await;
    let zid = daemon.zenoh_session().zid().to_string();
    let mut peer = blocking(|| {
        let mut p = RosPeer::start(port);
        p.subscribe("/reflexd/out", F32MA, None);
        p.subscribe("/reflexd/errors", "std_msgs/msg/String", None);
        p.subscribe("/reflexd/map", "sensor_msgs/msg/Image", None);
        p
    });
    for (topic, ty) in [
        ("/reflexd/out", RosType::Float32MultiArray),
        ("/reflexd/errors", RosType::String),
        ("/reflexd/map", RosType::Image),
    ] {
        matched(daemon.zenoh_session(), &rmw_zenoh_key(0, topic, ty)).await;
    }
    let native = client(port).await;
    let native_out = subscribe(&native, "t/out/affine/**").await;
    matched(daemon.zenoh_session(), "t/out/affine/reflexd/in").await;

    // The graph first: the attachments' GIDs come from these tokens.
    let tokens = blocking(|| peer.graph());
    let ours: Vec<String> = tokens
        .iter()
        .filter(|t| t.contains(&zid))
        .cloned()
        .collect();
    let node = ours
        .iter()
        .map(|t| parse_token(t).unwrap())
        .find(|p| p.kind == EntityKind::Node)
        .expect("a node token");
    assert_eq!(
        (node.node_name.as_str(), node.namespace.as_str()),
        ("reflexd_test", "/")
    );
    let out_token = token_of(&ours, EntityKind::Publisher, "/reflexd/out");
    let sub = parse_token(token_of(&ours, EntityKind::Subscription, "/reflexd/in")).unwrap();
    let sub_topic = sub.topic.unwrap();
    assert_eq!(
        sub_topic.type_name,
        "std_msgs::msg::dds_::Float32MultiArray_"
    );
    assert_eq!(sub_topic.type_hash, RosType::Float32MultiArray.type_hash());
    token_of(&ours, EntityKind::Publisher, "/reflexd/errors");
    token_of(&ours, EntityKind::Publisher, "/reflexd/map");
    assert!(
        !ours.iter().any(|t| t.contains("%bridge%in")),
        "bridge topics get no rmw_zenoh token: {ours:#?}"
    );
    let mut ids: Vec<String> = ours
        .iter()
        .map(|t| parse_token(t).unwrap().entity_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ours.len(), "entity ids are unique: {ours:#?}");

    // rmw_zenoh in → rmw_zenoh out, attachment stamped per publisher.
    let published = blocking(|| {
        peer.publish(json!({"topic": "/reflexd/in", "type": F32MA, "seq": 7,
                            "msg": {"shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}}))
    });
    let out = blocking(|| peer.sample("/reflexd/out", T)).expect("prediction on /reflexd/out");
    assert_eq!(out["message"]["shape"], json!([1, 4]));
    assert_eq!(out["message"]["strides"], json!([4, 4]));
    assert_eq!(floats(&out["message"]["data"]), vec![3.0, 5.0, 7.0, 9.0]);
    let att = &out["attachment"];
    assert_eq!(att["len"], 33);
    assert_eq!(att["seq"], 1);
    assert_eq!(att["gid"], hex(&gid_for_token(out_token)));
    assert_eq!(
        out["key"],
        rmw_zenoh_key(0, "/reflexd/out", RosType::Float32MultiArray)
    );
    // The same prediction on reflexd's own key, stream = the topic.
    let s = tokio::time::timeout(T, native_out.recv_async())
        .await
        .expect("native prediction")
        .unwrap();
    assert_eq!(s.key_expr().as_str(), "t/out/affine/reflexd/in");
    let (tensors, meta) = reflexd::wire::decode_output(&s.payload().to_bytes()).unwrap();
    assert_eq!(meta.get("seq").map(String::as_str), Some("7"), "{meta:?}");
    assert_eq!(
        reflexd::tensor::f32_values(&tensors[0]).unwrap(),
        vec![3.0, 5.0, 7.0, 9.0]
    );
    assert_eq!(published["seq"], 7);

    // A payload that is not CDR is answered on the ROS error topic.
    blocking(|| {
        peer.publish(json!({"topic": "/reflexd/in", "type": F32MA, "seq": 8,
                            "raw_hex": "0001000005000000", "msg": {}}))
    });
    let err = blocking(|| peer.sample("/reflexd/errors", T)).expect("error on /reflexd/errors");
    let e: Value = serde_json::from_str(err["message"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(e["code"], "bad_payload", "{e}");
    assert_eq!(e["pipeline"], "affine");
    assert_eq!(e["stream"], "reflexd/in");
    assert_eq!(e["seq"], 8);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("std_msgs/msg/Float32MultiArray"),
        "{e}"
    );
    assert_eq!(err["attachment"]["len"], 33);

    // Bridge key in (raw CDR, no attachment) → a 32FC1 map out.
    blocking(|| {
        peer.publish(
            json!({"topic": "/bridge/in", "type": F32MA, "key": "bot1/bridge/in",
                            "msg": {"shape": [1, 4], "data": [0.0, 0.5, 1.0, 2.0]}}),
        )
    });
    let map = blocking(|| peer.sample("/reflexd/map", T)).expect("map on /reflexd/map");
    let m = &map["message"];
    assert_eq!(m["encoding"], "32FC1");
    assert_eq!(
        (
            m["height"].as_u64(),
            m["width"].as_u64(),
            m["step"].as_u64()
        ),
        (Some(1), Some(4), Some(16))
    );
    assert_eq!(m["is_bigendian"], 0);
    let px: Vec<u8> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let got: Vec<f32> = px
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, vec![1.0, 2.0, 3.0, 5.0]);
    assert_eq!(
        m["frame_id"], "",
        "a Float32MultiArray input has no header to copy"
    );
    assert!(
        m["sec"].as_i64().unwrap() > 1_700_000_000,
        "stamped now: {m}"
    );

    // Discovery lists every key and topic.
    let json = reflexd::ops::describe::fetch(&native, "reflexd", T)
        .await
        .unwrap();
    let d: Description = serde_json::from_slice(&json).unwrap();
    assert_eq!(d.ros2.as_ref().unwrap().name, "/reflexd_test");
    let affine = &d.pipelines[0];
    assert_eq!(
        (affine.name.as_str(), affine.kind.as_str()),
        ("affine", "tensor")
    );
    assert_eq!(affine.inputs, vec!["x: f32[?,4]"]);
    let roles: Vec<(&str, &str, &str)> = affine
        .ros2
        .iter()
        .map(|t| (t.role.as_str(), t.topic.as_str(), t.type_name.as_str()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("input", "/reflexd/in", F32MA),
            ("output", "/reflexd/out", F32MA),
            ("error", "/reflexd/errors", "std_msgs/msg/String")
        ]
    );
    assert_eq!(d.pipelines[1].ros2[0].key, "bot1/bridge/in");
    let text = reflexd::ops::describe::render(&d);
    let line = text
        .lines()
        .find(|l| l.starts_with("/reflexd/map "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        vec!["/reflexd/map", "[sensor_msgs/msg/Image]", "output", "map"]
    );

    // Out of the graph once stopped.
    daemon.shutdown(Duration::from_secs(2)).await;
    let after = blocking(|| peer.graph());
    assert!(
        !after.iter().any(|t| t.contains(&zid)),
        "tokens left after shutdown: {after:#?}"
    );
    blocking(|| peer.quit());
}

fn llm_config() -> String {
    format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 32
        [pipeline.ros2]
        input = {{ topic = "/reflexd/prompt" }}
        output = {{ topic = "/reflexd/answer", format = "json" }}
        tokens = {{ topic = "/reflexd/answer/tokens" }}
        error = {{ topic = "/reflexd/errors" }}
        "#,
        llm_dir()
    )
}

/// Token chunks and the final answer of one ROS prompt.
fn answer(peer: &mut RosPeer) -> (Vec<Value>, Value) {
    let fin = peer
        .sample("/reflexd/answer", Duration::from_secs(120))
        .expect("final answer on /reflexd/answer");
    let fin_json: Value = serde_json::from_str(fin["message"]["data"].as_str().unwrap()).unwrap();
    let text = fin_json["text"].as_str().unwrap().to_string();
    // Chunks travel on their own key: collect until they add up.
    let mut chunks = Vec::new();
    let mut got = String::new();
    while got != text {
        let c = peer
            .sample("/reflexd/answer/tokens", T)
            .unwrap_or_else(|| panic!("chunks {got:?} never added up to {text:?}"));
        got.push_str(c["message"]["data"].as_str().unwrap());
        chunks.push(c);
    }
    (chunks, fin_json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ros_prompt_is_answered_with_token_chunks_and_a_final_message() {
    let (daemon, port) = start(&llm_config()).await;
    let mut peer = blocking(|| {
        let mut p = RosPeer::start(port);
        p.subscribe("/reflexd/answer", "std_msgs/msg/String", None);
        p.subscribe("/reflexd/answer/tokens", "std_msgs/msg/String", None);
        p.subscribe("/reflexd/errors", "std_msgs/msg/String", None);
        p
    });
    for topic in [
        "/reflexd/answer",
        "/reflexd/answer/tokens",
        "/reflexd/errors",
    ] {
        matched(
            daemon.zenoh_session(),
            &rmw_zenoh_key(0, topic, RosType::String),
        )
        .await;
    }
    let native = client(port).await;
    let native_out = subscribe(&native, "t/llm/out/**").await;
    matched(daemon.zenoh_session(), "t/llm/out/ros2-1").await;

    // Plain text is the prompt; the id is made up.
    let prompt = json!({"topic": "/reflexd/prompt", "type": "std_msgs/msg/String",
                        "msg": {"data": "What is the capital of France?"}});
    blocking(|| peer.publish(prompt));
    let (chunks, fin) = blocking(|| answer(&mut peer));
    let text = fin["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(fin["done"], true);
    let id = fin["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ros2-"), "{fin}");
    let seqs: Vec<i64> = chunks
        .iter()
        .map(|c| c["attachment"]["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=chunks.len() as i64).collect::<Vec<_>>(),
        "one publisher, in order"
    );
    // reflexd's own key carries the same generation.
    let mut native_final = None;
    while native_final.is_none() {
        let s = tokio::time::timeout(T, native_out.recv_async())
            .await
            .expect("native messages")
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        if v["done"] == true {
            assert_eq!(s.key_expr().as_str(), format!("t/llm/out/{id}"));
            native_final = Some(v);
        }
    }
    assert_eq!(native_final.unwrap()["text"], text);

    // JSON text is a command: its own id and options.
    let cmd = json!({"id": "ros-q2", "prompt": "What is the capital of France?", "max_tokens": 2});
    blocking(|| {
        peer.publish(
            json!({"topic": "/reflexd/prompt", "type": "std_msgs/msg/String",
                            "seq": 2, "msg": {"data": cmd.to_string()}}),
        )
    });
    let (chunks, fin) = blocking(|| answer(&mut peer));
    assert_eq!(fin["id"], "ros-q2");
    assert_eq!(fin["finish_reason"], "length");
    assert_eq!(fin["usage"]["completion_tokens"], 2);
    assert!(
        text.starts_with(fin["text"].as_str().unwrap()),
        "greedy: a prefix of {text:?}: {fin}"
    );
    assert!(chunks.len() <= 2);

    // A command that fails validation is answered on the ROS error topic.
    let bad = json!({"id": "not a valid id", "prompt": "x"});
    blocking(|| {
        peer.publish(
            json!({"topic": "/reflexd/prompt", "type": "std_msgs/msg/String",
                            "seq": 3, "msg": {"data": bad.to_string()}}),
        )
    });
    let err = blocking(|| peer.sample("/reflexd/errors", T)).expect("error on /reflexd/errors");
    let e: Value = serde_json::from_str(err["message"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (e["code"].as_str(), e["pipeline"].as_str()),
        (Some("bad_command"), Some("chat")),
        "{e}"
    );
    daemon.shutdown(Duration::from_secs(2)).await;
    blocking(|| peer.quit());
}

fn camera_config() -> String {
    format!(
        r#"
        [[pipeline]]
        name = "detect"
        model = "{0}"
        input = "t/cam/*"
        output = "t/out/cam"
        publish = ["v8"]
        format = "image"
        [pipeline.pre]
        color = "rgb"
        [pipeline.ros2]
        input = {{ topic = "/camera/image_raw", type = "sensor_msgs/msg/Image" }}
        output = {{ topic = "/reflexd/scores", type = "sensor_msgs/msg/Image" }}
        error = {{ topic = "/reflexd/errors" }}
        [[pipeline]]
        name = "detect_png"
        model = "{0}"
        input = "t/png/*"
        output = "t/out/png"
        publish = ["v8"]
        format = "image"
        [pipeline.pre]
        resize = "letterbox"
        [pipeline.ros2]
        input = {{ topic = "/camera/image_raw/compressed", type = "sensor_msgs/msg/CompressedImage" }}
        output = {{ topic = "/reflexd/scores_png", type = "{F32MA}" }}
        "#,
        test_model("detect.onnx")
    )
}

/// A `width`×`height` RGB PNG of one colour.
fn png_file(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut file = Vec::new();
    let mut enc = png::Encoder::new(&mut file, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().unwrap();
    let px: Vec<u8> = rgb
        .iter()
        .copied()
        .cycle()
        .take((width * height * 3) as usize)
        .collect();
    w.write_image_data(&px).unwrap();
    w.finish().unwrap();
    file
}

/// A `width`×`height` bgr8 frame of one colour, rows padded to `step`.
fn bgr_frame(width: usize, height: usize, step: usize, bgr: [u8; 3]) -> Vec<u8> {
    let mut row: Vec<u8> = bgr.iter().copied().cycle().take(width * 3).collect();
    row.resize(step, 0xEE);
    row.repeat(height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_frames_feed_the_image_stage_and_answers_keep_the_header() {
    let (daemon, port) = start(&camera_config()).await;
    let mut peer = blocking(|| {
        let mut p = RosPeer::start(port);
        p.subscribe("/reflexd/scores", "sensor_msgs/msg/Image", None);
        p.subscribe("/reflexd/scores_png", F32MA, None);
        p.subscribe("/reflexd/errors", "std_msgs/msg/String", None);
        p
    });
    for (topic, ty) in [
        ("/reflexd/scores", RosType::Image),
        ("/reflexd/scores_png", RosType::Float32MultiArray),
        ("/reflexd/errors", RosType::String),
    ] {
        matched(daemon.zenoh_session(), &rmw_zenoh_key(0, topic, ty)).await;
    }
    // 80×48 bgr8, rows padded (step 250 > 240): resized to the model's
    // 64×64 and turned to RGB / 255, a one-colour frame stays one colour.
    let (w, h, step) = (80, 48, 250);
    let data = bgr_frame(w, h, step, [0, 51, 255]);
    blocking(|| {
        peer.publish(
            json!({"topic": "/camera/image_raw", "type": "sensor_msgs/msg/Image",
            "msg": {"sec": 12, "nanosec": 345, "frame_id": "cam_left", "height": h,
                    "width": w, "encoding": "bgr8", "step": step, "data": data}}),
        )
    });
    let s = blocking(|| peer.sample("/reflexd/scores", T)).expect("answer on /reflexd/scores");
    let m = &s["message"];
    assert_eq!(
        (m["sec"].as_i64(), m["nanosec"].as_i64()),
        (Some(12), Some(345))
    );
    assert_eq!(m["frame_id"], "cam_left", "the input header is copied");
    assert_eq!(m["encoding"], "32FC1");
    let cells = 64 / 8 * (64 / 8);
    assert_eq!(
        (m["height"].as_u64(), m["width"].as_u64()),
        (Some(7), Some(cells))
    );
    let px: Vec<u8> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let v: Vec<f32> = px
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Rows 4..7 are the class scores: the mean of R, G, B over each cell.
    for (class, want) in [(4, 1.0f32), (5, 0.2), (6, 0.0)] {
        let row = &v[class * cells as usize..(class + 1) * cells as usize];
        assert!(
            row.iter().all(|x| (x - want).abs() < 1e-3),
            "class row {class}: {row:?}"
        );
    }
    assert_eq!(s["attachment"]["len"], 33);
    let native = client(port).await;
    let json = reflexd::ops::describe::fetch(&native, "reflexd", T)
        .await
        .unwrap();
    let d: Description = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        d.pipelines[0].stages,
        vec!["image: rgb 64x64 f32 nchw, stretch"]
    );

    // A PNG CompressedImage, letterboxed: 64×32 content between pad rows.
    blocking(|| {
        peer.publish(json!({"topic": "/camera/image_raw/compressed",
            "type": "sensor_msgs/msg/CompressedImage",
            "msg": {"frame_id": "cam_left", "format": "png", "data": png_file(32, 16, [255, 51, 0])}}))
    });
    let s =
        blocking(|| peer.sample("/reflexd/scores_png", T)).expect("answer on /reflexd/scores_png");
    assert_eq!(s["message"]["shape"], json!([1, 7, cells]));
    let v = floats(&s["message"]["data"]);
    // Cell rows 2..6 of 8 hold the picture (rows 0-1 and 6-7 are padding).
    let red = &v[4 * cells as usize..5 * cells as usize];
    let inside: Vec<f64> = red[2 * 8..6 * 8].to_vec();
    assert!(inside.iter().all(|x| (x - 1.0).abs() < 1e-3), "{red:?}");
    assert!((red[0] - 114.0 / 255.0).abs() < 1e-3, "padding: {red:?}");

    // Frames the stage cannot take are answered on the error topic.
    for (msg, needle) in [
        (
            json!({"height": 2, "width": 2, "encoding": "16UC1", "step": 4, "data": vec![0u8; 8]}),
            "encoding \"16UC1\" is not supported",
        ),
        (
            json!({"height": 4, "width": 2, "encoding": "rgb8", "step": 6, "data": vec![0u8; 12]}),
            "step 6 × height 4 needs 24",
        ),
    ] {
        blocking(|| {
            peer.publish(json!({"topic": "/camera/image_raw",
                                "type": "sensor_msgs/msg/Image", "msg": msg}))
        });
        let err = blocking(|| peer.sample("/reflexd/errors", T)).expect("error on /reflexd/errors");
        let e: Value = serde_json::from_str(err["message"]["data"].as_str().unwrap()).unwrap();
        assert_eq!(e["code"], "bad_image", "{e}");
        assert_eq!(e["stream"], "camera/image_raw");
        assert!(e["message"].as_str().unwrap().contains(needle), "{e}");
    }
    daemon.shutdown(Duration::from_secs(2)).await;
    blocking(|| peer.quit());
}

fn ocr_config() -> String {
    let m = |n: &str| fetched_model(&format!("{n}.folded.onnx"));
    format!(
        r#"
        [[pipeline]]
        name = "text"
        model = "{}"
        input = "t/cam/*"
        output = "t/out/text"
        format = "image"
        deadline_ms = 60000
        [pipeline.ocr]
        cls = "{}"
        rec = "{}"
        [pipeline.ros2]
        input = {{ topic = "/camera/image_raw", type = "sensor_msgs/msg/Image" }}
        output = {{ topic = "/reflexd/text", type = "vision_msgs/msg/Detection2DArray" }}
        "#,
        m("ch_PP-OCRv4_det_infer"),
        m("ch_ppocr_mobile_v2.0_cls_infer"),
        m("ch_PP-OCRv4_rec_infer"),
    )
}

/// scikit-image's `page.png` (grey) as bgr8 rows padded to `step`.
fn page_bgr8(pad: usize) -> (u32, u32, usize, Vec<u8>) {
    let path = repo().join("models/data/page.png");
    let grey = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/provision.sh)", path.display()))
        .to_luma8();
    let (w, h) = grey.dimensions();
    let step = w as usize * 3 + pad;
    let mut data = Vec::with_capacity(step * h as usize);
    for row in grey.rows() {
        data.extend(row.flat_map(|p| [p.0[0]; 3]));
        data.resize(data.len() + pad, 0x5A);
    }
    (w, h, step, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocr_lines_go_out_as_detection2darray_with_the_camera_header() {
    let (daemon, port) = start(&ocr_config()).await;
    let mut peer = blocking(|| {
        let mut p = RosPeer::start(port);
        p.subscribe("/reflexd/text", "vision_msgs/msg/Detection2DArray", None);
        p
    });
    let key = rmw_zenoh_key(0, "/reflexd/text", RosType::Detection2DArray);
    matched(daemon.zenoh_session(), &key).await;
    let native = client(port).await;
    let sub = subscribe(&native, "t/out/text/**").await;
    let (w, h, step, data) = page_bgr8(5);
    blocking(|| {
        peer.publish(
            json!({"topic": "/camera/image_raw", "type": "sensor_msgs/msg/Image",
            "msg": {"sec": 41, "nanosec": 7, "frame_id": "cam_front", "height": h,
                    "width": w, "encoding": "bgr8", "step": step, "data": data}}),
        )
    });
    // reflexd's own answer on its zenoh key, then the same lines as ROS
    // detections, decoded by rosbags.
    let mine = recv(&sub).await;
    let lines = mine.answer()["answer"]["lines"].as_array().unwrap().clone();
    let s = blocking(|| peer.sample("/reflexd/text", Duration::from_secs(120)))
        .expect("detections on /reflexd/text");
    let m = &s["message"];
    assert_eq!(
        (m["header"]["sec"].as_i64(), m["header"]["nanosec"].as_i64()),
        (Some(41), Some(7))
    );
    assert_eq!(
        m["header"]["frame_id"], "cam_front",
        "the camera header is copied"
    );
    assert_eq!(s["attachment"]["len"], 33);
    let dets = m["detections"].as_array().unwrap();
    assert_eq!(dets.len(), lines.len(), "one detection per text line: {m}");
    let texts: Vec<&str> = dets
        .iter()
        .map(|d| d["results"][0]["class_id"].as_str().unwrap())
        .collect();
    let all = texts.join(" ");
    for word in ["Region", "segmentation", "markers", "background"] {
        assert!(all.contains(word), "{word:?} not read: {texts:?}");
    }
    for (d, l) in dets.iter().zip(&lines) {
        assert_eq!(d["results"][0]["class_id"], l["text"]);
        let score = d["results"][0]["score"].as_f64().unwrap();
        assert!((score - l["confidence"].as_f64().unwrap()).abs() < 1e-6);
        assert_eq!(d["header"]["frame_id"], "cam_front");
        // The box centre is the mean of the line's four corners.
        let corners: Vec<(f64, f64)> = l["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        let cx = corners.iter().map(|p| p.0).sum::<f64>() / 4.0;
        let cy = corners.iter().map(|p| p.1).sum::<f64>() / 4.0;
        let b = d["bbox"].as_array().unwrap();
        assert!((b[0].as_f64().unwrap() - cx).abs() < 1e-6, "{d} vs {l}");
        assert!((b[1].as_f64().unwrap() - cy).abs() < 1e-6, "{d} vs {l}");
        assert!(
            b[3].as_f64().unwrap() > b[4].as_f64().unwrap(),
            "lines are wider than tall: {d}"
        );
    }
    daemon.shutdown(Duration::from_secs(2)).await;
    blocking(|| peer.quit());
}

/// `reflexd-sim --ros2` plays a ROS 2 camera and prompt against a daemon
/// configured from the same file, and prints the text lines reflexd answers
/// as `Detection2DArray` (its exit status says whether they came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ros2_simulator_reads_the_topics_from_the_config_and_prints_text_lines() {
    let body = ocr_config();
    let (daemon, port) = start(&body).await;
    let dir = std::env::temp_dir().join(format!("reflexd-ros2-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ros2.toml");
    std::fs::write(&cfg, &body).unwrap();
    let out = blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reflexd-sim"))
            .args(["--ros2", "--seconds", "1", "--camera-hz", "2", "--connect"])
            .arg(format!("tcp/127.0.0.1:{port}"))
            .arg("--config")
            .arg(&cfg)
            .arg("--image")
            .arg(repo().join("models/data/page.png"))
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("/reflexd/text [vision_msgs/msg/Detection2DArray] frame \"camera\""),
        "{stdout}"
    );
    assert!(stdout.contains("\"Region-basedsegmentation\""), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    daemon.shutdown(Duration::from_secs(2)).await;
}

/// The squares frame of docs/models.md (bgr8, 128×96): red, green and blue
/// 16×16 squares on black.
fn squares_bgr8() -> (u32, u32, Vec<u8>) {
    let (w, h) = (128usize, 96usize);
    let mut px = vec![0u8; w * h * 3];
    for (x0, y0, bgr) in [
        (32, 16, [0, 0, 255]),
        (80, 48, [0, 255, 0]),
        (96, 16, [255, 0, 0]),
    ] {
        for y in y0..y0 + 16 {
            for x in x0..x0 + 16 {
                px[(y * w + x) * 3..][..3].copy_from_slice(&bgr);
            }
        }
    }
    (w as u32, h as u32, px)
}

/// A detector's answer goes out as Detection2DArray: one detection per box,
/// the label as the hypothesis, the box in source pixels, the header copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_go_out_as_detection2darray_with_labels_and_source_boxes() {
    let config = format!(
        r#"
        [[pipeline]]
        name = "detect"
        model = "{}"
        input = "t/cam/*"
        output = "t/out/detect"
        format = "image"
        [pipeline.pre]
        color = "rgb"
        resize = "letterbox"
        [pipeline.answer]
        kind = "detect"
        layout = "yolov8"
        tensor = "v8"
        confidence = 0.5
        labels = "{}"
        [pipeline.ros2]
        input = {{ topic = "/camera/image_raw", type = "sensor_msgs/msg/Image" }}
        output = {{ topic = "/reflexd/detections", type = "vision_msgs/msg/Detection2DArray" }}
        "#,
        test_model("detect.onnx"),
        test_model("colors.txt"),
    );
    let (daemon, port) = start(&config).await;
    let mut peer = blocking(|| {
        let mut p = RosPeer::start(port);
        p.subscribe(
            "/reflexd/detections",
            "vision_msgs/msg/Detection2DArray",
            None,
        );
        p
    });
    let key = rmw_zenoh_key(0, "/reflexd/detections", RosType::Detection2DArray);
    matched(daemon.zenoh_session(), &key).await;
    let native = client(port).await;
    let sub = subscribe(&native, "t/out/detect/**").await;
    let (w, h, data) = squares_bgr8();
    blocking(|| {
        peer.publish(
            json!({"topic": "/camera/image_raw", "type": "sensor_msgs/msg/Image",
            "msg": {"sec": 3, "nanosec": 9, "frame_id": "cam_top", "height": h,
                    "width": w, "encoding": "bgr8", "step": w * 3, "data": data}}),
        )
    });
    let mine = recv(&sub).await;
    let dets_json = mine.answer()["answer"]["detections"]
        .as_array()
        .unwrap()
        .clone();
    let s = blocking(|| peer.sample("/reflexd/detections", T)).expect("on /reflexd/detections");
    let m = &s["message"];
    assert_eq!(m["header"]["frame_id"], "cam_top");
    assert_eq!(
        (m["header"]["sec"].as_i64(), m["header"]["nanosec"].as_i64()),
        (Some(3), Some(9))
    );
    let dets = m["detections"].as_array().unwrap();
    let mut labels: Vec<&str> = dets
        .iter()
        .map(|d| d["results"][0]["class_id"].as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["blue", "green", "red"], "{m}");
    assert_eq!(dets.len(), dets_json.len());
    for (d, j) in dets.iter().zip(&dets_json) {
        assert_eq!(d["results"][0]["class_id"], j["label"]);
        let b = &j["box"];
        let f = |k: &str| b[k].as_f64().unwrap();
        let want = [
            (f("x1") + f("x2")) / 2.0,
            (f("y1") + f("y2")) / 2.0,
            0.0,
            f("x2") - f("x1"),
            f("y2") - f("y1"),
        ];
        let got: Vec<f64> = d["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got, want, "{d} vs {j}");
    }
    // Source pixels: the red square is x 32..48, y 16..32.
    let red = dets
        .iter()
        .find(|d| d["results"][0]["class_id"] == "red")
        .unwrap();
    assert_eq!(red["bbox"], json!([40.0, 24.0, 0.0, 16.0, 16.0]));
    daemon.shutdown(Duration::from_secs(2)).await;
    blocking(|| peer.quit());
}
