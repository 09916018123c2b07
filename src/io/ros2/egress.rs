//! ROS 2 egress: answers as ROS messages on the pipelines' ROS topics, each
//! rmw_zenoh sample with its attachment (the topic's sequence number, the
//! source timestamp, its stable GID). Predictions (output tensors, or the
//! answer: detections and OCR lines as `Detection2DArray`, any answer as
//! JSON text) are published by the worker that produced them right after
//! reflexd's own reply ([`publish_prediction`], `CongestionControl::Drop`:
//! never blocks);
//! generation text by the generation's delivery thread
//! ([`publish_generation`]); errors wherever reflexd reports one
//! ([`publish_error`]). A message that cannot be encoded is logged
//! (rate-limited) and skipped: reflexd's own reply has gone out already.

use zenoh::Wait;

use super::ingress::header_for;
use crate::config::ros2::TextFormat;
use crate::ctx::Ctx;
use crate::ctx::ros::RosTopic;
use crate::error::ErrorCode;
use crate::io::egress::Pipe;
use crate::job::Job;
use crate::ros2::msg::{MultiArrayDimension, MultiArrayLayout};
use crate::ros2::vision::Detection2DArray;
use crate::ros2::{Float32MultiArray, Header, Image, RosType, StringMsg};
use crate::tensor::Dtype;
use crate::wire::reply::OutTensor;

/// Puts one CDR payload on a ROS topic, with the rmw_zenoh attachment when
/// the topic has one.
fn put(topic: &RosTopic, payload: Vec<u8>) -> Result<(), String> {
    let mut put = topic.publisher.put(payload);
    if let Some(state) = &topic.state {
        put = put.attachment(state.next_attachment());
    }
    put.wait().map_err(|e| e.to_string())
}

fn put_text(topic: &RosTopic, data: String) -> Result<(), String> {
    let payload = StringMsg { data }.encode().map_err(|e| e.to_string())?;
    put(topic, payload)
}

/// One request's output: name, dtype, shape and little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// A tensor as `std_msgs/msg/Float32MultiArray`: one dimension per axis
/// (label `d<i>`), row-major strides as the message comment defines them.
pub fn multi_array(t: View<'_>) -> Float32MultiArray {
    let mut stride: usize = t.shape.iter().product();
    let dim = t
        .shape
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let d = MultiArrayDimension {
                label: format!("d{i}"),
                size: size as u32,
                stride: stride as u32,
            };
            stride /= size.max(1);
            d
        })
        .collect();
    Float32MultiArray {
        layout: MultiArrayLayout {
            dim,
            data_offset: 0,
        },
        data: t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// A map output `[1.., H, W]` (f32 or u8) as a one-channel image: `32FC1`
/// or `mono8`, tightly packed.
pub fn map_image<'a>(t: View<'a>, header: Header) -> Result<Image<'a>, String> {
    let dims: Vec<usize> = t.shape.iter().copied().skip_while(|&d| d == 1).collect();
    let (h, w) = match dims.as_slice() {
        [h, w] => (*h, *w),
        [w] => (1, *w),
        [] => (1, 1),
        _ => {
            return Err(format!(
                "output `{}` has shape {:?}; a sensor_msgs/msg/Image output needs [1.., H, W]",
                t.name, t.shape
            ));
        }
    };
    let (encoding, bpp) = match t.dtype {
        Dtype::F32 => ("32FC1", 4),
        Dtype::U8 => ("mono8", 1),
        other => return Err(format!("output `{}` is {}", t.name, other.name())),
    };
    Ok(Image {
        header,
        height: h as u32,
        width: w as u32,
        encoding: encoding.into(),
        is_bigendian: 0,
        step: (w * bpp) as u32,
        data: t.data,
    })
}

/// What a worker published for one request: its output tensors and/or its
/// answer (JSON text), as reflexd's own reply carried them.
#[derive(Clone, Copy)]
pub struct Prediction<'a> {
    pub tensors: Option<&'a [OutTensor<'a>]>,
    pub answer: Option<&'a str>,
}

/// Publishes job `job`'s prediction on its pipeline's ROS output topic, if
/// it has one, as the topic's type: the first published output as an array
/// or an image; the answer as `Detection2DArray` (OCR lines, detections)
/// or as JSON text. Start-up checked that the pipeline produces what the
/// type needs (`check_tensor_pipe`).
pub fn publish_prediction(ctx: &Ctx, job: &Job, p: Prediction<'_>) {
    let Some(topic) = &ctx.ros2.tensors[job.pipeline].output else {
        return;
    };
    let tp = &ctx.tensors[job.pipeline];
    let answer = || {
        p.answer
            .ok_or("the pipeline published no answer".to_string())
    };
    let sent = match topic.out.endpoint.ty {
        RosType::Detection2DArray => answer()
            .and_then(|a| serde_json::from_str(a).map_err(|e| e.to_string()))
            .and_then(|a| Detection2DArray::from_answer(&a, &header_for(job)))
            .and_then(|d| d.encode().map_err(|e| e.to_string()))
            .and_then(|payload| put(topic, payload)),
        RosType::String => answer().and_then(|a| put_text(topic, a.into())),
        ty => match p.tensors.and_then(|t| t.first()) {
            None => Err("the pipeline published no output tensor".to_string()),
            Some(o) => tensor_payload(ty, o, job).and_then(|payload| put(topic, payload)),
        },
    };
    if let Err(e) = sent
        && tp.log.allow(ErrorCode::InferenceFailed)
    {
        tracing::warn!(pipeline = %tp.cfg.name, topic = %topic.out.endpoint.topic, error = %e, "cannot publish ROS 2 prediction");
    }
}

/// One output tensor as an array or a one-channel image. A single
/// request's output is read in place; a batched one is cut to its rows.
fn tensor_payload(ty: RosType, o: &OutTensor<'_>, job: &Job) -> Result<Vec<u8>, String> {
    let owned = o.rows.map(|_| o.to_tensor());
    let shape: Vec<usize> = match &owned {
        Some(t) => t.shape.clone(),
        None => o.shape.iter().map(|&d| d.max(0) as usize).collect(),
    };
    let len = shape.iter().product::<usize>() * o.dtype.size();
    let data = match &owned {
        Some(t) => &t.data[..],
        None => &o.data[..len.min(o.data.len())],
    };
    let view = View {
        name: o.name,
        dtype: o.dtype,
        shape: &shape,
        data,
    };
    match ty {
        RosType::Image => {
            map_image(view, header_for(job)).and_then(|img| img.encode().map_err(|e| e.to_string()))
        }
        _ => multi_array(view).encode().map_err(|e| e.to_string()),
    }
}

/// The text a generation message carries: its `text` field (token and
/// final messages both have one).
fn text_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct HasText {
        text: String,
    }
    serde_json::from_slice::<HasText>(body).ok().map(|m| m.text)
}

/// Publishes one message of a ROS-originated generation: token chunks on
/// the tokens topic, the final message on the output topic, as text or as
/// reflexd's JSON per the topic's `format`. Runs on the generation's
/// delivery thread.
pub fn publish_generation(ctx: &Ctx, gi: usize, body: &[u8], last: bool) {
    let r = &ctx.ros2.gens[gi];
    let Some(topic) = (if last { &r.output } else { &r.tokens }) else {
        return;
    };
    let data = match topic.out.format {
        TextFormat::Json => String::from_utf8_lossy(body).into_owned(),
        TextFormat::Text => match text_of(body) {
            Some(t) => t,
            None => return,
        },
    };
    if let Err(e) = put_text(topic, data) {
        tracing::warn!(pipeline = %ctx.gens[gi].cfg.name, error = %e, "cannot publish ROS 2 generation message");
    }
}

/// Publishes reflexd's JSON error message on `pipe`'s ROS error topic, if
/// it has one.
pub fn publish_error(ctx: &Ctx, pipe: Pipe, json: &[u8]) {
    let r = match pipe {
        Pipe::Tensor(i) => &ctx.ros2.tensors[i],
        Pipe::Gen(i) => &ctx.ros2.gens[i],
    };
    let Some(topic) = &r.error else { return };
    let data = String::from_utf8_lossy(json).into_owned();
    if let Err(e) = put_text(topic, data) {
        tracing::warn!(topic = %topic.out.endpoint.topic, error = %e, "cannot publish ROS 2 error message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(dtype: Dtype, shape: &'a [usize], data: &'a [u8]) -> View<'a> {
        View {
            name: "y",
            dtype,
            shape,
            data,
        }
    }

    #[test]
    fn arrays_carry_row_major_strides() {
        let data: Vec<u8> = (0..24).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let m = multi_array(view(Dtype::F32, &[2, 3, 4], &data));
        let dims: Vec<(u32, u32)> = m.layout.dim.iter().map(|d| (d.size, d.stride)).collect();
        assert_eq!(dims, vec![(2, 24), (3, 12), (4, 4)]);
        assert_eq!(m.data[23], 23.0);
        let back = Float32MultiArray::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(back.shape().unwrap(), vec![2, 3, 4]);
    }

    #[test]
    fn maps_become_one_channel_images_and_other_shapes_are_refused() {
        let data = vec![7u8; 6 * 4];
        let img = map_image(view(Dtype::F32, &[1, 1, 2, 3], &data), Header::default()).unwrap();
        assert_eq!((img.height, img.width, img.step), (2, 3, 12));
        assert_eq!(img.encoding, "32FC1");
        let img = map_image(view(Dtype::U8, &[4, 6], &data), Header::default()).unwrap();
        assert_eq!(
            (img.height, img.width, img.step, img.encoding.as_str()),
            (4, 6, 6, "mono8")
        );
        let e = map_image(view(Dtype::F32, &[1, 2, 2, 3], &data), Header::default()).unwrap_err();
        assert!(e.contains("needs [1.., H, W]"), "{e}");
        let e = map_image(view(Dtype::I64, &[3], &data), Header::default()).unwrap_err();
        assert!(e.contains("is i64"), "{e}");
    }
}
