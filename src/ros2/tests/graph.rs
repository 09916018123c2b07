//! Keys, names, type hashes, liveliness tokens, publisher state and the
//! config table.

use crate::ros2::attachment::Attachment;
use crate::ros2::config::{Defaults, Flavour, RawRos2, Ros2Endpoint};
use crate::ros2::keyexpr::*;
use crate::ros2::liveliness::*;
use crate::ros2::publisher::{PublisherState, gid_for_token};
use crate::ros2::typehash;
use crate::ros2::types::RosType;

const IMAGE_HASH: &str = "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47";

#[test]
fn rmw_zenoh_keys_follow_the_design_doc_example() {
    assert_eq!(
        rmw_zenoh_key(0, "/camera/image_raw", RosType::Image),
        format!("0/camera/image_raw/sensor_msgs::msg::dds_::Image_/{IMAGE_HASH}")
    );
    assert_eq!(
        rmw_zenoh_subscribe_key(7, "/reflexd/prompt", RosType::String),
        "7/reflexd/prompt/std_msgs::msg::dds_::String_/*"
    );
    for t in RosType::ALL {
        let key = rmw_zenoh_key(0, "/a/b", t);
        assert!(
            zenoh::key_expr::KeyExpr::try_from(key.as_str()).is_ok(),
            "{key}"
        );
        assert!(typehash::is_rihs01(t.type_hash()), "{t}");
        assert_eq!(RosType::parse(t.name()), Some(t));
    }
    assert_eq!(
        RosType::Detection2DArray.dds_name(),
        "vision_msgs::msg::dds_::Detection2DArray_"
    );
    assert_eq!(RosType::parse("sensor_msgs/Image"), Some(RosType::Image));
    assert_eq!(RosType::parse("sensor_msgs/msg/PointCloud2"), None);
}

#[test]
fn bridge_keys_drop_the_leading_slash_and_add_the_namespace() {
    assert_eq!(bridge_key(None, "/camera/image_raw"), "camera/image_raw");
    assert_eq!(
        bridge_key(Some("bot1"), "/camera/image_raw"),
        "bot1/camera/image_raw"
    );
    assert_eq!(bridge_namespace("/bot1/").unwrap().as_deref(), Some("bot1"));
    assert_eq!(bridge_namespace("/").unwrap(), None);
    assert!(bridge_namespace("/bot 1").is_err());
}

#[test]
fn topic_names_follow_ros_rules() {
    assert_eq!(
        full_topic_name("/camera/image_raw").unwrap(),
        "/camera/image_raw"
    );
    assert_eq!(
        full_topic_name("camera/image_raw").unwrap(),
        "/camera/image_raw"
    );
    for bad in [
        "",
        "/",
        "/a//b",
        "/a/b/",
        "/a/1b",
        "/a/b*",
        "~/x",
        "/{node}/x",
        "/a b",
        "/a/$b",
    ] {
        assert!(full_topic_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_hashed_json_is_rosidls_canonical_form() {
    assert_eq!(
        typehash::hashable_json("std_msgs/msg/String").unwrap(),
        r#"{"type_description": {"type_name": "std_msgs/msg/String", "fields": [{"name": "data", "type": {"type_id": 17, "capacity": 0, "string_capacity": 0, "nested_type_name": ""}}]}, "referenced_type_descriptions": []}"#
    );
    let header = typehash::hashable_json("std_msgs/msg/Header").unwrap();
    assert!(header.ends_with(r#""referenced_type_descriptions": [{"type_name": "builtin_interfaces/msg/Time", "fields": [{"name": "sec", "type": {"type_id": 6, "capacity": 0, "string_capacity": 0, "nested_type_name": ""}}, {"name": "nanosec", "type": {"type_id": 7, "capacity": 0, "string_capacity": 0, "nested_type_name": ""}}]}]}"#), "{header}");
    assert_eq!(typehash::rihs01("sensor_msgs/msg/PointCloud2"), None);
    assert!(!typehash::is_rihs01("RIHS01_D31D"));
    assert!(!typehash::is_rihs01("TypeHashNotSupported"));
}

fn node() -> NodeIdentity {
    NodeIdentity {
        domain: 0,
        zid: "f1e2d3c4b5a6978800112233445566".into(),
        node_id: 0,
        enclave: "/".into(),
        namespace: "/".into(),
        name: "infer".into(),
    }
}

fn image_publisher(qos: Qos) -> String {
    node().endpoint_token(&EndpointInfo {
        entity_id: 1,
        kind: EntityKind::Publisher,
        topic: "/camera/image_raw",
        type_name: &RosType::Image.dds_name(),
        type_hash: RosType::Image.type_hash(),
        qos,
    })
}

#[test]
fn tokens_have_rmw_zenohs_layout() {
    let zid = node().zid;
    assert_eq!(
        node().node_token(),
        format!("@ros2_lv/0/{zid}/0/0/NN/%/%/infer")
    );
    assert_eq!(
        image_publisher(Qos::reliable(10)),
        format!(
            "@ros2_lv/0/{zid}/0/1/MP/%/%/infer/%camera%image_raw/sensor_msgs::msg::dds_::Image_/{IMAGE_HASH}/::,10:,:,:,,"
        )
    );
    assert_eq!(Qos::sensor_data().to_chunk(), "2::,5:,:,:,,");
    assert_eq!(Qos::default().to_chunk(), "::,:,:,:,,");
    let mut ns = node();
    ns.namespace = "/robot/arm".into();
    assert!(ns.node_token().ends_with("/NN/%/%robot%arm/infer"));
    for t in [node().node_token(), image_publisher(Qos::sensor_data())] {
        assert!(
            zenoh::key_expr::KeyExpr::try_from(t.as_str()).is_ok(),
            "{t}"
        );
    }
}

#[test]
fn tokens_parse_back_as_rmw_zenohs_graph_cache_reads_them() {
    let qos = Qos {
        durability: Durability::TransientLocal,
        history: History::KeepAll,
        deadline: RmwDuration {
            sec: Some(1),
            nsec: Some(500),
        },
        ..Qos::sensor_data()
    };
    let t = parse_token(&image_publisher(qos)).unwrap();
    assert_eq!(
        (t.domain, t.kind, t.node_id.as_str(), t.entity_id.as_str()),
        (0, EntityKind::Publisher, "0", "1")
    );
    assert_eq!(
        (
            t.enclave.as_str(),
            t.namespace.as_str(),
            t.node_name.as_str()
        ),
        ("/", "/", "infer")
    );
    let topic = t.topic.unwrap();
    assert_eq!(topic.name, "/camera/image_raw");
    assert_eq!(topic.type_name, "sensor_msgs::msg::dds_::Image_");
    assert_eq!(topic.type_hash, IMAGE_HASH);
    assert_eq!(topic.qos, qos);
    let n = parse_token(&node().node_token()).unwrap();
    assert_eq!((n.kind, n.topic), (EntityKind::Node, None));
}

#[test]
fn a_token_written_by_another_rmw_zenoh_implementation_parses() {
    // From nano-ros' logs (Humble: no RIHS01): reliable, volatile, keep-last 10.
    let t = parse_token("@ros2_lv/0/c40c0137f1e48f6cfee1f90b51ffd9aa/0/5/MP/%/%/mrm_handler/%system%fail_safe%mrm_state/std_msgs::msg::dds_::Int32_/TypeHashNotSupported/1:2:1,10:,:,:,,").unwrap();
    let topic = t.topic.unwrap();
    assert_eq!(topic.name, "/system/fail_safe/mrm_state");
    assert_eq!(topic.type_hash, "TypeHashNotSupported");
    assert_eq!(topic.qos, Qos::reliable(10));
}

#[test]
fn malformed_tokens_are_rejected_like_rmw_zenoh_does() {
    let good = image_publisher(Qos::reliable(10));
    let chunks: Vec<&str> = good.split('/').collect();
    let reason = |t: &str| parse_token(t).unwrap_err().reason;
    assert!(reason(&chunks[..12].join("/")).contains("endpoint needs 13"));
    assert!(reason(&chunks[..8].join("/")).contains("need at least 9"));
    assert!(reason(&good.replace("/%/%/", "//%/")).contains("empty chunk"));
    assert!(reason(&good.replace("@ros2_lv", "@ros2")).contains("admin space"));
    assert!(reason(&good.replace("/MP/", "/XX/")).contains("unknown entity"));
    assert!(reason(&good.replace("@ros2_lv/0/", "@ros2_lv/x/")).contains("domain"));
    for qos in [
        "::,10:,:,:",
        "9::,10:,:,:,,",
        "::,x:,:,:,,",
        "::10:,:,:,,",
        "::,10:,:,:,",
    ] {
        let t = good.replace("::,10:,:,:,,", qos);
        assert!(parse_token(&t).is_err(), "QoS {qos:?} accepted");
    }
    assert_eq!(demangle(&mangle("/a/b")), "/a/b");
}

#[test]
fn publishers_number_their_samples_from_one_with_a_stable_gid() {
    let token = image_publisher(Qos::reliable(10));
    assert_eq!(gid_for_token(&token), gid_for_token(&token));
    assert_ne!(gid_for_token(&token), gid_for_token(&node().node_token()));
    let p = PublisherState::new(gid_for_token(&token));
    for seq in 1..=3 {
        let att = p.attachment_at(1000 + seq);
        assert_eq!(att.len(), 33);
        let (a, _) = Attachment::decode(&att).unwrap();
        assert_eq!((a.sequence_number, a.source_timestamp), (seq, 1000 + seq));
        assert_eq!(a.gid.as_bytes(), p.gid());
    }
    let (a, _) = Attachment::decode(&p.next_attachment()).unwrap();
    assert_eq!(a.sequence_number, 4);
    assert!(a.source_timestamp > 1_700_000_000_000_000_000);
}

fn raw(toml_text: &str) -> Result<RawRos2, toml::de::Error> {
    toml::from_str(toml_text)
}

fn endpoint(toml_text: &str) -> Result<Ros2Endpoint, String> {
    Ros2Endpoint::from_raw(
        &raw(toml_text).unwrap(),
        "pipeline[cam].input.ros2",
        Defaults::default(),
    )
}

#[test]
fn config_table_defaults_to_rmw_zenoh_on_domain_zero() {
    let e = endpoint(
        r#"topic = "/camera/image_raw"
type = "sensor_msgs/msg/Image""#,
    )
    .unwrap();
    assert_eq!(e.flavour, Flavour::RmwZenoh { domain: 0 });
    assert_eq!(
        e.publish_key(),
        rmw_zenoh_key(0, "/camera/image_raw", RosType::Image)
    );
    assert!(
        e.subscribe_key()
            .ends_with("/sensor_msgs::msg::dds_::Image_/*")
    );
    assert!(e.is_rmw_zenoh());
    let b = endpoint(
        r#"topic = "camera/image_raw"
type = "sensor_msgs/msg/CompressedImage"
flavour = "bridge"
namespace = "/bot1""#,
    )
    .unwrap();
    assert_eq!(b.topic, "/camera/image_raw");
    assert_eq!(
        (b.publish_key(), b.subscribe_key()),
        (
            "bot1/camera/image_raw".into(),
            "bot1/camera/image_raw".into()
        )
    );
    assert!(!b.is_rmw_zenoh());
}

#[test]
fn config_errors_name_the_key_the_value_and_what_is_allowed() {
    let t = |extra: &str| format!("topic = \"/t\"\ntype = \"std_msgs/msg/String\"\n{extra}");
    let unknown = raw(&t("qos = 1")).unwrap_err().to_string();
    assert!(unknown.contains("unknown field `qos`"), "{unknown}");
    for (extra, needle) in [
        (
            "domain = 233",
            "pipeline[cam].input.ros2.domain = 233: a ROS domain id is 0..=232",
        ),
        ("flavour = \"dds\"", "flavour = \"dds\": use \"rmw_zenoh\""),
        (
            "namespace = \"/bot1\"",
            "namespace: only valid with flavour = \"bridge\"",
        ),
        (
            "flavour = \"bridge\"\ndomain = 1",
            "domain = 1: only valid with flavour = \"rmw_zenoh\"",
        ),
        (
            "flavour = \"bridge\"\nnamespace = \"a//b\"",
            "namespace = \"a//b\": a namespace has an empty segment",
        ),
    ] {
        let e = endpoint(&t(extra)).unwrap_err();
        assert!(e.contains(needle), "{extra}: {e}");
    }
    let e = endpoint("topic = \"/t\"\ntype = \"sensor_msgs/msg/PointCloud2\"").unwrap_err();
    assert!(e.contains("type = \"sensor_msgs/msg/PointCloud2\": unsupported message type; supported: std_msgs/msg/String, sensor_msgs/msg/Image"), "{e}");
    let e = endpoint("topic = \"/camera/\"\ntype = \"std_msgs/msg/String\"").unwrap_err();
    assert!(
        e.contains("topic = \"/camera/\": a topic name has an empty segment"),
        "{e}"
    );
}

#[test]
fn stamps_convert_to_and_from_unix_nanoseconds() {
    use crate::ros2::msg::Time;
    let t = Time::from_unix_nanos(1_700_000_000_123_456_789);
    assert_eq!(
        t,
        Time {
            sec: 1_700_000_000,
            nanosec: 123_456_789
        }
    );
    assert_eq!(t.to_unix_nanos(), 1_700_000_000_123_456_789);
    assert_eq!(
        Time::from_unix_nanos(-1),
        Time {
            sec: -1,
            nanosec: 999_999_999
        }
    );
    assert_eq!(Time::from_unix_nanos(i64::MAX).sec, i32::MAX);
}
