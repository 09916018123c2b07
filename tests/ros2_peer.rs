//! Loopback interop with a ROS 2 stand-in we did not write the codec of:
//! tests/py/ros2_peer.py serialises and parses with `rosbags` and writes
//! attachments with eclipse-zenoh. Samples a "ROS node" publishes on
//! rmw_zenoh keys must decode with `reflexd::ros2`, and what `reflexd::ros2`
//! publishes (Detection2DArray, String, with attachments) must decode in
//! rosbags; the liveliness tokens we declare must be visible under
//! `@ros2_lv/<domain>/**` the way `ros2 node list` queries them.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reflexd::ros2::RosType;
use reflexd::ros2::attachment::{Attachment, AttachmentFormat};
use reflexd::ros2::keyexpr::{rmw_zenoh_key, rmw_zenoh_subscribe_key};
use reflexd::ros2::liveliness::{EndpointInfo, EntityKind, NodeIdentity, Qos, parse_token};
use reflexd::ros2::msg::{CompressedImage, Header, Image, StringMsg, Time};
use reflexd::ros2::publisher::{PublisherState, gid_for_token};
use reflexd::ros2::vision::{
    BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesis, ObjectHypothesisWithPose,
};
use serde_json::Value;

fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return p.into();
    }
    let cache = reflexd::infer::runtime::cache_dir().expect("HOME or REFLEXD_CACHE is set");
    cache.join("venv/bin/python")
}

async fn listening_session() -> (zenoh::Session, String) {
    let port = common::free_port();
    let conf = format!(
        r#"{{ mode: "peer", listen: {{ endpoints: ["tcp/127.0.0.1:{port}"] }}, connect: {{ endpoints: [] }},
            scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    );
    let session = zenoh::open(zenoh::Config::from_json5(&conf).unwrap())
        .await
        .unwrap();
    (session, format!("tcp/127.0.0.1:{port}"))
}

/// The peer script, with its JSON lines delivered on a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Peer {
    fn spawn(endpoint: &str, args: &[&str]) -> Peer {
        let mut child = Command::new(python())
            .arg(common::repo().join("tests/py/ros2_peer.py"))
            .args(["--connect", endpoint])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tests/py/ros2_peer.py (make setup provisions rosbags)");
        let (tx, lines) = mpsc::channel();
        let out: ChildStdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    /// The next line whose `event` is `event`, skipping others.
    fn next(&self, event: &str, timeout: Duration) -> Option<Value> {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return Some(v),
                Ok(v) => assert_ne!(v["event"], "error", "peer failed: {v}"),
                Err(_) => return None,
            }
        }
        None
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "ros2_peer.py exited with {status}");
    }
}

struct Received {
    key: String,
    payload: Vec<u8>,
    attachment: Option<Vec<u8>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_serialised_by_rosbags_decode_in_reflexd() {
    let (session, endpoint) = listening_session().await;
    let (tx, rx) = mpsc::channel::<Received>();
    let mut subs = Vec::new();
    for (topic, ty) in [
        ("/camera/image_raw", RosType::Image),
        ("/camera/image_raw/compressed", RosType::CompressedImage),
        ("/reflexd/prompt", RosType::String),
    ] {
        let tx = tx.clone();
        let sub = session
            .declare_subscriber(rmw_zenoh_subscribe_key(0, topic, ty))
            .callback(move |s| {
                let _ = tx.send(Received {
                    key: s.key_expr().to_string(),
                    payload: s.payload().to_bytes().into_owned(),
                    attachment: s.attachment().map(|a| a.to_bytes().into_owned()),
                });
            })
            .await
            .unwrap();
        subs.push(sub);
    }
    let peer = tokio::task::spawn_blocking(move || {
        let peer = Peer::spawn(&endpoint, &["publish", "--count", "3", "--wait", "10"]);
        let matched = peer
            .next("matched", Duration::from_secs(20))
            .expect("peer starts");
        assert_eq!(matched["all"], true, "every topic found our subscriber");
        let published: Vec<Value> = (0..9)
            .map(|_| {
                peer.next("published", Duration::from_secs(10))
                    .expect("peer publishes")
            })
            .collect();
        peer.finish();
        published
    })
    .await
    .unwrap();
    let mut by_key_seq: HashMap<(String, i64), Value> = HashMap::new();
    for p in peer {
        by_key_seq.insert(
            (
                p["key"].as_str().unwrap().into(),
                p["seq"].as_i64().unwrap(),
            ),
            p,
        );
    }
    for _ in 0..9 {
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("all 9 samples arrive");
        let (att, format) =
            Attachment::decode_slice(r.attachment.as_deref().expect("attachment")).unwrap();
        assert_eq!(format, AttachmentFormat::Current);
        let p = &by_key_seq[&(r.key.clone(), att.sequence_number)];
        assert_eq!(hex(att.gid.as_bytes()), p["gid"].as_str().unwrap());
        check_decoded(&r, &p["message"]);
    }
    drop(subs);
    session.close().await.unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_stamp(h: &Header, m: &Value) {
    assert_eq!(h.stamp.sec as i64, m["sec"].as_i64().unwrap());
    assert_eq!(h.stamp.nanosec as u64, m["nanosec"].as_u64().unwrap());
    assert_eq!(h.frame_id, m["frame_id"].as_str().unwrap());
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect()
}

/// The key rosbags hashed must be the key we compute, byte for byte.
fn check_decoded(r: &Received, m: &Value) {
    if r.key.contains("::Image_/") {
        assert_eq!(r.key, rmw_zenoh_key(0, "/camera/image_raw", RosType::Image));
        let img = Image::decode(&r.payload).unwrap();
        check_stamp(&img.header, m);
        assert_eq!((img.width, img.height, img.step), (4, 3, 12));
        assert_eq!(img.encoding, "bgr8");
        assert_eq!(img.data, bytes_of(&m["data"]).as_slice());
    } else if r.key.contains("::CompressedImage_/") {
        let key = rmw_zenoh_key(0, "/camera/image_raw/compressed", RosType::CompressedImage);
        assert_eq!(r.key, key);
        let img = CompressedImage::decode(&r.payload).unwrap();
        check_stamp(&img.header, m);
        assert_eq!(img.format, "png");
        assert_eq!(img.data, bytes_of(&m["data"]).as_slice());
    } else {
        assert_eq!(r.key, rmw_zenoh_key(0, "/reflexd/prompt", RosType::String));
        assert_eq!(
            StringMsg::decode(&r.payload).unwrap().data,
            m["data"].as_str().unwrap()
        );
    }
}

fn detections(n: i32) -> Detection2DArray {
    let header = Header {
        stamp: Time {
            sec: 1_700_000_000 + n,
            nanosec: 42,
        },
        frame_id: "camera".into(),
    };
    let line = |text: &str, score| ObjectHypothesisWithPose {
        hypothesis: ObjectHypothesis {
            class_id: text.into(),
            score,
        },
        ..Default::default()
    };
    Detection2DArray {
        header: header.clone(),
        detections: vec![Detection2D {
            header,
            results: vec![line("EXIT \u{2192} 12", 0.93)],
            bbox: BoundingBox2D::from_corners(10.0, 20.0, 110.0, 60.0),
            id: "line-0".into(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_reflexd_publishes_decodes_in_rosbags() {
    let (session, endpoint) = listening_session().await;
    let peer = tokio::task::spawn_blocking(move || {
        let peer = Peer::spawn(
            &endpoint,
            &[
                "subscribe",
                "--topic",
                "/reflexd/text=vision_msgs/msg/Detection2DArray",
                "--topic",
                "/reflexd/answer=std_msgs/msg/String",
                "--each",
                "1",
                "--timeout",
                "20",
            ],
        );
        peer.next("ready", Duration::from_secs(20))
            .expect("peer subscribes");
        peer
    })
    .await
    .unwrap();
    let text_key = rmw_zenoh_key(0, "/reflexd/text", RosType::Detection2DArray);
    let answer_key = rmw_zenoh_key(0, "/reflexd/answer", RosType::String);
    let text_pub = session.declare_publisher(text_key.clone()).await.unwrap();
    let answer_pub = session.declare_publisher(answer_key.clone()).await.unwrap();
    let text_state = PublisherState::new(gid_for_token("test/text"));
    let answer_state = PublisherState::new(gid_for_token("test/answer"));
    let answer = StringMsg {
        data: "{\"answer\": \"Paris\"}".into(),
    };
    let (tx, done) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut got = HashMap::new();
        while got.len() < 2 {
            let Some(v) = peer.next("sample", Duration::from_secs(20)) else {
                break;
            };
            got.insert(v["topic"].as_str().unwrap().to_string(), v);
        }
        let _ = tx.send(());
        peer.finish();
        got
    });
    // Publish until the peer has one of each: the first puts can precede
    // its subscription reaching us.
    for n in 0..200 {
        if done.try_recv().is_ok() {
            break;
        }
        text_pub
            .put(detections(n).encode().unwrap())
            .attachment(text_state.next_attachment())
            .await
            .unwrap();
        answer_pub
            .put(answer.encode().unwrap())
            .attachment(answer_state.next_attachment())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let text = &got["/reflexd/text"];
    assert_eq!(text["key"], text_key.as_str());
    let att = &text["attachment"];
    assert_eq!(att["len"], 33);
    assert_eq!(att["gid"], hex(text_state.gid()));
    let n = att["seq"].as_i64().unwrap() as i32 - 1;
    let m = &text["message"];
    assert_eq!(m["header"]["sec"], 1_700_000_000 + n);
    let det = &m["detections"][0];
    assert_eq!(det["id"], "line-0");
    assert_eq!(det["results"][0]["class_id"], "EXIT \u{2192} 12");
    assert_eq!(det["results"][0]["score"], 0.93);
    assert_eq!(det["results"][0]["orientation_w"], 1.0);
    assert_eq!(
        det["bbox"],
        serde_json::json!([60.0, 40.0, 0.0, 100.0, 40.0])
    );
    let ans = &got["/reflexd/answer"];
    assert_eq!(ans["key"], answer_key.as_str());
    assert_eq!(ans["message"]["data"], answer.data.as_str());
    assert_eq!(ans["attachment"]["gid"], hex(answer_state.gid()));
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_liveliness_tokens_are_visible_to_a_graph_query() {
    let (session, endpoint) = listening_session().await;
    let node = NodeIdentity {
        domain: 0,
        zid: session.zid().to_string(),
        node_id: 0,
        enclave: "/".into(),
        namespace: "/".into(),
        name: "reflexd".into(),
    };
    let pub_token = node.endpoint_token(&EndpointInfo {
        entity_id: 1,
        kind: EntityKind::Publisher,
        topic: "/reflexd/text",
        type_name: &RosType::Detection2DArray.dds_name(),
        type_hash: RosType::Detection2DArray.type_hash(),
        qos: Qos::reliable(10),
    });
    let _nn = session
        .liveliness()
        .declare_token(node.node_token())
        .await
        .unwrap();
    let _mp = session
        .liveliness()
        .declare_token(pub_token.clone())
        .await
        .unwrap();
    let keys = tokio::task::spawn_blocking(move || {
        let peer = Peer::spawn(&endpoint, &["graph", "--wait", "2"]);
        let mut keys = Vec::new();
        while let Some(v) = peer.next("token", Duration::from_secs(20)) {
            keys.push(v["key"].as_str().unwrap().to_string());
            if keys.len() == 2 {
                break;
            }
        }
        peer.finish();
        keys
    })
    .await
    .unwrap();
    assert!(keys.contains(&node.node_token()), "{keys:?}");
    assert!(keys.contains(&pub_token), "{keys:?}");
    let t = parse_token(&pub_token).unwrap();
    assert_eq!(t.topic.unwrap().name, "/reflexd/text");
    session.close().await.unwrap();
}
