//! Stage two of the ROS 2 tables: `[ros2]` (the node reflexd appears as in
//! the ROS graph, and the default domain) and each pipeline's
//! `[pipeline.ros2]` (the topics it reads and writes, next to its zenoh
//! keys). The endpoint rules (names, types, flavour, domain) belong to the
//! ROS 2 layer ([`crate::ros2::config`]); this module decides which message
//! type fits which place, and that no topic is used with two types or read
//! back by the daemon that writes it. docs/ros2.md § Configuration.

use serde::Deserialize;

use super::{ConfigError, GeneratorConfig, InputFormat, PipelineConfig, invalid};
use crate::ros2::config::{Defaults, MAX_DOMAIN_ID, RawRos2};
use crate::ros2::{Flavour, Ros2Endpoint, RosType};

/// `[ros2]`: who reflexd is in the ROS graph.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRos2Node {
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub domain: Option<u32>,
}

/// `[pipeline.ros2]` of a tensor pipeline.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTensorRos2 {
    pub input: Option<RawRos2>,
    pub output: Option<RawRos2>,
    pub error: Option<RawRos2>,
}

/// `[pipeline.ros2]` of a generation pipeline.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGenerateRos2 {
    pub input: Option<RawRos2>,
    pub output: Option<RawRos2>,
    pub tokens: Option<RawRos2>,
    pub error: Option<RawRos2>,
}

/// Default ROS node name.
pub const DEFAULT_NODE_NAME: &str = "reflexd";

/// The ROS node reflexd declares (`ros2 node list` shows `<namespace>/<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ros2Node {
    pub name: String,
    /// Absolute, `/` for the root namespace.
    pub namespace: String,
    /// Default domain of endpoints that do not name one.
    pub domain: u32,
}

impl Default for Ros2Node {
    fn default() -> Self {
        Ros2Node {
            name: DEFAULT_NODE_NAME.into(),
            namespace: "/".into(),
            domain: 0,
        }
    }
}

/// What a `std_msgs/msg/String` output carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TextFormat {
    /// The text alone (generated text, token chunks).
    #[default]
    Text,
    /// reflexd's JSON message (ids, usage, timing), as on its zenoh keys.
    Json,
}

/// One topic reflexd publishes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ros2Out {
    pub endpoint: Ros2Endpoint,
    pub format: TextFormat,
}

/// A pipeline's ROS 2 topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineRos2 {
    pub input: Option<Ros2Endpoint>,
    /// Predictions (tensor pipelines) or final answers (generation).
    pub output: Option<Ros2Out>,
    /// Generated text chunks, one message per released piece.
    pub tokens: Option<Ros2Out>,
    /// Errors as reflexd's JSON error message in a `std_msgs/msg/String`.
    pub error: Option<Ros2Out>,
}

impl PipelineRos2 {
    /// Every topic with its role (`input`, `output`, `tokens`, `error`).
    pub fn endpoints(&self) -> impl Iterator<Item = (&'static str, &Ros2Endpoint)> {
        let outs = [
            ("output", &self.output),
            ("tokens", &self.tokens),
            ("error", &self.error),
        ];
        self.input.iter().map(|e| ("input", e)).chain(
            outs.into_iter()
                .filter_map(|(role, o)| o.as_ref().map(|o| (role, &o.endpoint))),
        )
    }
}

fn ros_name_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn node(r: &RawRos2Node) -> Result<Ros2Node, ConfigError> {
    let d = Ros2Node::default();
    let name = r.node.clone().unwrap_or(d.name);
    if !ros_name_ok(&name) {
        return Err(invalid(format!(
            "ros2.node = {name:?}: a ROS node name uses letters, digits and '_' and does not start with a digit"
        )));
    }
    let namespace = match r.namespace.as_deref() {
        None | Some("/") => d.namespace,
        Some(ns) => {
            let inner = ns.strip_prefix('/').unwrap_or(ns);
            if !inner.split('/').all(ros_name_ok) {
                return Err(invalid(format!(
                    "ros2.namespace = {ns:?}: expected \"/\" or names like \"/robot1\" (letters, digits, '_'; no empty or trailing segment)"
                )));
            }
            format!("/{inner}")
        }
    };
    let domain = r.domain.unwrap_or(0);
    if domain > MAX_DOMAIN_ID {
        return Err(invalid(format!(
            "ros2.domain = {domain}: a ROS domain id is 0..={MAX_DOMAIN_ID} (ROS_DOMAIN_ID)"
        )));
    }
    Ok(Ros2Node {
        name,
        namespace,
        domain,
    })
}

/// One table's place: its key path, the types allowed there and the one
/// implied when `type` is left out.
struct Place<'a> {
    at: String,
    allowed: &'a [RosType],
    implied: Option<RosType>,
    /// Whether `format` may be set (string outputs of generation pipelines).
    format: bool,
    why: &'a str,
}

fn endpoint(raw: &RawRos2, place: &Place, node: &Ros2Node) -> Result<Ros2Endpoint, ConfigError> {
    let defaults = Defaults {
        domain: node.domain,
        ty: place.implied,
    };
    let ep = Ros2Endpoint::from_raw(raw, &place.at, defaults).map_err(invalid)?;
    if !place.allowed.contains(&ep.ty) {
        let names: Vec<&str> = place.allowed.iter().map(|t| t.name()).collect();
        let expected = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        };
        return Err(invalid(format!(
            "{}.type = {:?}: {}; expected {expected}",
            place.at,
            ep.ty.name(),
            place.why,
        )));
    }
    if raw.format.is_some() && !place.format {
        return Err(invalid(format!(
            "{}.format: only the output and tokens topics of a generation pipeline take a format",
            place.at
        )));
    }
    Ok(ep)
}

fn output(raw: &RawRos2, place: &Place, node: &Ros2Node) -> Result<Ros2Out, ConfigError> {
    let endpoint = endpoint(raw, place, node)?;
    let format = match raw.format.as_deref() {
        None | Some("text") => TextFormat::Text,
        Some("json") => TextFormat::Json,
        Some(other) => {
            return Err(invalid(format!(
                "{}.format = {other:?}: expected \"text\" (the text alone) or \"json\" (reflexd's JSON messages)",
                place.at
            )));
        }
    };
    Ok(Ros2Out { endpoint, format })
}

fn place<'a>(name: &str, role: &str, allowed: &'a [RosType], why: &'a str) -> Place<'a> {
    Place {
        at: format!("pipeline {name:?}: ros2.{role}"),
        allowed,
        implied: None,
        format: false,
        why,
    }
}

const STRING: &[RosType] = &[RosType::String];

/// A place where only text fits, so `type` may be left out.
fn text_place<'a>(name: &str, role: &str, why: &'a str) -> Place<'a> {
    Place {
        implied: Some(RosType::String),
        ..place(name, role, STRING, why)
    }
}

/// Tensor pipelines read generic tensors (`Float32MultiArray`), or camera
/// frames (`Image`, `CompressedImage`) when they take images
/// (`format = "image"`: the worker's image stage prepares them). They write
/// tensors as arrays or images (an output `[1.., H, W]` as a one-channel
/// map), or their answer: detections and OCR lines as `Detection2DArray`,
/// any answer as JSON text (`String`). A chain stage has no input of its
/// own, and a pipeline that offloads runs elsewhere: neither takes topics.
pub(super) fn tensor(
    p: &PipelineConfig,
    raw: Option<RawTensorRos2>,
    node: &Ros2Node,
) -> Result<Option<PipelineRos2>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let at = format!("pipeline {:?}: ros2", p.name);
    if matches!(p.format, InputFormat::Chained(_)) {
        return Err(invalid(format!(
            "{at}: a chain stage has no input of its own; give the ROS topics to the chain's first pipeline (its answer is the chain's)"
        )));
    }
    if p.offload.is_some() {
        return Err(invalid(format!(
            "{at}: a pipeline that offloads cannot have ROS 2 topics (its requests may run on another daemon)"
        )));
    }
    let images = matches!(p.format, InputFormat::Image(_));
    let all_inputs = [
        RosType::Float32MultiArray,
        RosType::Image,
        RosType::CompressedImage,
    ];
    let input_types: &[RosType] = if images {
        &all_inputs[1..]
    } else {
        &all_inputs[..1]
    };
    let output_types = [
        RosType::Float32MultiArray,
        RosType::Image,
        RosType::Detection2DArray,
        RosType::String,
    ];
    let input = raw
        .input
        .as_ref()
        .map(|r| {
            let image = matches!(
                r.type_name.as_deref().and_then(RosType::parse),
                Some(RosType::Image | RosType::CompressedImage)
            );
            let why = match (image, images) {
                (true, false) => {
                    "camera frames need an image pipeline: set format = \"image\" (docs/images.md, docs/ros2.md)"
                }
                (false, true) => "an image pipeline reads camera frames",
                _ => "a tensor pipeline reads generic tensors",
            };
            endpoint(r, &place(&p.name, "input", input_types, why), node)
        })
        .transpose()?;
    let why = "a tensor pipeline publishes its output tensor or its answer";
    let out = raw
        .output
        .as_ref()
        .map(|r| output(r, &place(&p.name, "output", &output_types, why), node))
        .transpose()?;
    let error = raw
        .error
        .as_ref()
        .map(|r| {
            output(
                r,
                &text_place(&p.name, "error", "errors are JSON text"),
                node,
            )
        })
        .transpose()?;
    Ok(Some(PipelineRos2 {
        input,
        output: out,
        tokens: None,
        error,
    }))
}

/// Generation pipelines read prompts and write text, all `std_msgs/String`.
pub(super) fn generate(
    g: &GeneratorConfig,
    raw: Option<RawGenerateRos2>,
    node: &Ros2Node,
) -> Result<Option<PipelineRos2>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let why = "a generation pipeline reads and writes text";
    let input = raw
        .input
        .as_ref()
        .map(|r| endpoint(r, &text_place(&g.name, "input", why), node))
        .transpose()?;
    let text = |role: &str, r: &RawRos2| {
        let mut pl = text_place(&g.name, role, why);
        pl.format = role != "error";
        output(r, &pl, node)
    };
    Ok(Some(PipelineRos2 {
        input,
        output: raw.output.as_ref().map(|r| text("output", r)).transpose()?,
        tokens: raw.tokens.as_ref().map(|r| text("tokens", r)).transpose()?,
        error: raw.error.as_ref().map(|r| text("error", r)).transpose()?,
    }))
}

/// Where a zenoh key is shared: rmw_zenoh topics by domain and name (the
/// type is part of the key), bridge topics by their key.
fn topic_id(e: &Ros2Endpoint) -> String {
    match &e.flavour {
        Flavour::RmwZenoh { domain } => format!("rmw_zenoh domain {domain} {}", e.topic),
        Flavour::Bridge { .. } => format!("bridge key {}", e.publish_key()),
    }
}

/// Across all pipelines: one type per topic (ROS 2 refuses mixed types on a
/// topic), and no topic both read and written by the daemon (it would feed
/// its own answers back in).
pub(super) fn check_topics<'a>(
    all: impl Iterator<Item = (&'a str, &'a PipelineRos2)>,
) -> Result<(), ConfigError> {
    let mut seen: Vec<(String, &str, &str, &Ros2Endpoint)> = Vec::new();
    for (pipeline, r) in all {
        for (role, e) in r.endpoints() {
            let id = topic_id(e);
            for (other_id, other_pipe, other_role, other) in &seen {
                if *other_id != id {
                    continue;
                }
                let clash = |what: &str| {
                    invalid(format!(
                        "pipeline {pipeline:?}: ros2.{role}.topic = {:?}: {what} pipeline {other_pipe:?} ros2.{other_role}",
                        e.topic
                    ))
                };
                if other.ty != e.ty {
                    return Err(clash(&format!(
                        "has type {} here and {} in",
                        e.ty, other.ty
                    )));
                }
                if (role == "input") != (*other_role == "input") {
                    return Err(clash(
                        "is both read and written: it would feed answers back in, see",
                    ));
                }
            }
            seen.push((id, pipeline, role, e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const TENSOR: &str = r#"
        [[pipeline]]
        name = "cam"
        model = "m.onnx"
        input = "in/*"
        output = "out"
    "#;
    const GEN: &str = r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "llm"
        input = "chat/cmd"
        output = "chat/out"
    "#;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("/base")).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err()
    }

    #[test]
    fn node_table_has_defaults_and_checked_names() {
        let c = load(TENSOR).unwrap();
        assert_eq!(c.ros2, Ros2Node::default());
        assert!(c.pipelines[0].ros2.is_none());
        let c = load(&format!(
            "[ros2]\nnode = \"infer_1\"\nnamespace = \"robot1/arm\"\ndomain = 7\n{TENSOR}"
        ))
        .unwrap();
        assert_eq!(c.ros2.namespace, "/robot1/arm");
        for (table, needle) in [
            ("node = \"1st\"", "ros2.node = \"1st\": a ROS node name"),
            ("node = \"a-b\"", "ros2.node = \"a-b\""),
            ("namespace = \"/a//b\"", "ros2.namespace = \"/a//b\""),
            (
                "domain = 233",
                "ros2.domain = 233: a ROS domain id is 0..=232",
            ),
            ("nodes = \"x\"", "unknown field `nodes`"),
        ] {
            let e = err(&format!("[ros2]\n{table}\n{TENSOR}"));
            assert!(e.contains(needle), "{table}: {e}");
        }
    }

    #[test]
    fn endpoints_take_the_node_domain_and_implied_types() {
        let c = load(&format!(
            "[ros2]\ndomain = 3\n{TENSOR}\n[pipeline.ros2]\n\
             input = {{ topic = \"/in\", type = \"std_msgs/msg/Float32MultiArray\" }}\n\
             error = {{ topic = \"/errors\", domain = 4 }}\n"
        ))
        .unwrap();
        let r = c.pipelines[0].ros2.as_ref().unwrap();
        let input = r.input.as_ref().unwrap();
        assert_eq!(input.flavour, Flavour::RmwZenoh { domain: 3 });
        let error = &r.error.as_ref().unwrap().endpoint;
        assert_eq!(
            (error.ty, &error.flavour),
            (RosType::String, &Flavour::RmwZenoh { domain: 4 })
        );
        let c = load(&format!(
            "{GEN}\n[pipeline.ros2]\ninput = {{ topic = \"/prompt\" }}\n\
             output = {{ topic = \"/answer\", format = \"json\" }}\n\
             tokens = {{ topic = \"/answer/tokens\" }}\n"
        ))
        .unwrap();
        let r = c.generators[0].ros2.as_ref().unwrap();
        assert_eq!(r.input.as_ref().unwrap().ty, RosType::String);
        assert_eq!(r.output.as_ref().unwrap().format, TextFormat::Json);
        assert_eq!(r.tokens.as_ref().unwrap().format, TextFormat::Text);
        let roles: Vec<&str> = r.endpoints().map(|(role, _)| role).collect();
        assert_eq!(roles, vec!["input", "output", "tokens"]);
    }

    #[test]
    fn types_that_do_not_fit_their_place_are_refused_with_the_reason() {
        let ros = |body: &str| err(&format!("{TENSOR}\n[pipeline.ros2]\n{body}\n"));
        for (body, needle) in [
            (
                "input = { topic = \"/cam\", type = \"sensor_msgs/msg/Image\" }",
                "pipeline \"cam\": ros2.input.type = \"sensor_msgs/msg/Image\": camera frames need an image pipeline: set format = \"image\"",
            ),
            (
                "input = { topic = \"/cam\" }",
                "pipeline \"cam\": ros2.input.type: missing",
            ),
            (
                "output = { topic = \"/o\", type = \"sensor_msgs/msg/CompressedImage\" }",
                "ros2.output.type = \"sensor_msgs/msg/CompressedImage\": a tensor pipeline publishes its output tensor or its answer; expected std_msgs/msg/Float32MultiArray, sensor_msgs/msg/Image, vision_msgs/msg/Detection2DArray or std_msgs/msg/String",
            ),
            (
                "error = { topic = \"/e\", type = \"sensor_msgs/msg/Image\" }",
                "ros2.error.type = \"sensor_msgs/msg/Image\": errors are JSON text; expected std_msgs/msg/String",
            ),
            (
                "output = { topic = \"/o\", type = \"sensor_msgs/msg/Image\", format = \"json\" }",
                "ros2.output.format: only the output and tokens topics of a generation pipeline",
            ),
            ("tokens = { topic = \"/t\" }", "unknown field `tokens`"),
        ] {
            let e = ros(body);
            assert!(e.contains(needle), "{body}: {e}");
        }
        let e = err(&format!(
            "{GEN}\n[pipeline.ros2]\noutput = {{ topic = \"/a\", format = \"yaml\" }}\n"
        ));
        assert!(
            e.contains("ros2.output.format = \"yaml\": expected \"text\""),
            "{e}"
        );
        let e = err(&format!(
            "{GEN}\n[pipeline.ros2]\nerror = {{ topic = \"/e\", format = \"text\" }}\n"
        ));
        assert!(e.contains("ros2.error.format: only"), "{e}");
    }

    #[test]
    fn camera_frames_are_accepted_by_image_pipelines() {
        for ty in ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"] {
            let c = load(&format!(
                "{TENSOR}\nformat = \"image\"\n[pipeline.pre]\ncolor = \"bgr\"\n[pipeline.ros2]\n\
                 input = {{ topic = \"/camera/image_raw\", type = \"{ty}\" }}\n"
            ))
            .unwrap();
            let p = &c.pipelines[0];
            assert_eq!(
                p.ros2.as_ref().unwrap().input.as_ref().unwrap().ty.name(),
                ty
            );
            assert!(matches!(p.format, InputFormat::Image(_)), "{:?}", p.format);
        }
    }

    #[test]
    fn a_topic_has_one_type_and_is_never_read_back() {
        let two = format!(
            "{TENSOR}\n[pipeline.ros2]\noutput = {{ topic = \"/x\", type = \"std_msgs/msg/Float32MultiArray\" }}\n\
             {GEN}\n[pipeline.ros2]\noutput = {{ topic = \"/x\" }}\n"
        );
        let e = err(&two);
        assert!(
            e.contains("pipeline \"chat\": ros2.output.topic = \"/x\": has type std_msgs/msg/String here and std_msgs/msg/Float32MultiArray in pipeline \"cam\" ros2.output"),
            "{e}"
        );
        let looped = format!(
            "{TENSOR}\n[pipeline.ros2]\ninput = {{ topic = \"/x\", type = \"std_msgs/msg/Float32MultiArray\" }}\n\
             output = {{ topic = \"/x\", type = \"std_msgs/msg/Float32MultiArray\" }}\n"
        );
        assert!(
            err(&looped).contains("is both read and written"),
            "{}",
            err(&looped)
        );
        // Same name in another domain, and shared error topics, are fine.
        load(&format!(
            "{TENSOR}\n[pipeline.ros2]\ninput = {{ topic = \"/x\", type = \"std_msgs/msg/Float32MultiArray\" }}\n\
             output = {{ topic = \"/x\", type = \"std_msgs/msg/Float32MultiArray\", domain = 1 }}\n\
             error = {{ topic = \"/errors\" }}\n\
             {GEN}\n[pipeline.ros2]\nerror = {{ topic = \"/errors\" }}\n"
        ))
        .unwrap();
    }
}
