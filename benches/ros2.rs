//! ROS 2 ingress cost: decoding a 640×480 bgr8 `sensor_msgs/msg/Image` from
//! its CDR payload against decoding the same pixels from reflexd's own
//! safetensors message, measured in the same run in interleaved rounds so
//! machine noise hits every row alike. The CDR decoder borrows the pixels
//! from the payload; the safetensors decoder copies them into an owned
//! tensor, so a third row adds that copy to the CDR path for a like-for-like
//! figure. Two more rows run the whole ingress of a camera pipeline: the
//! decode, then main's image stage (`infer::pre`: BGR→RGB, bilinear resize
//! to 224×224, /255, NCHW f32), from the CDR message and from the
//! safetensors message, so the ROS path is judged where it matters: next to
//! the pre-processing every frame pays anyway. A sixth row is reflexd's own
//! image message (raw pixels, the description in the attachment), the
//! plain-zenoh way to send a camera frame. Prints a table with medians
//! and ratios to the safetensors row; it never fails on a number:
//! `cargo bench --bench ros2 [-- --quick]`.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Instant;

use reflexd::infer::pre::{
    Encoding, ImageClaim, ImageInput, PreSpec, Preprocessor, RawPre, check_image,
};
use reflexd::ros2::msg::{Header, Image, Time};
use reflexd::tensor::{Dtype, Tensor};
use reflexd::wire::image::parse_image_attachment;
use reflexd::wire::{self, RequestMeta};

const W: u32 = 640;
const H: u32 = 480;

fn pixels() -> Vec<u8> {
    (0..(W * H * 3)).map(|i| (i * 31 % 251) as u8).collect()
}

fn cdr_payload(px: &[u8]) -> Vec<u8> {
    let img = Image {
        header: Header {
            stamp: Time {
                sec: 1_700_000_000,
                nanosec: 5,
            },
            frame_id: "camera".into(),
        },
        height: H,
        width: W,
        encoding: "bgr8".into(),
        is_bigendian: 0,
        step: W * 3,
        data: px,
    };
    img.encode().expect("encodes")
}

fn safetensors_payload(px: &[u8]) -> Vec<u8> {
    let t = Tensor {
        name: "image".into(),
        dtype: Dtype::U8,
        shape: vec![H as usize, W as usize, 3],
        data: px.to_vec().into(),
    };
    wire::encode_request(&[t], &RequestMeta::default())
}

/// A named decoder under test.
type Row<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// The image stage of a 224×224 RGB f32 NCHW model, with its output buffer.
struct Stage {
    pre: Preprocessor,
    out: Vec<u8>,
}

impl Stage {
    fn new() -> Stage {
        let spec = PreSpec::from_raw(&RawPre::default()).expect("defaults are valid");
        let pre = Preprocessor::new(spec.resolve(&[1, 3, 224, 224], "f32").expect("fits"));
        let out = vec![0; pre.output_bytes()];
        Stage { pre, out }
    }

    /// Checks and pre-processes one bgr8 frame with row pitch `step`.
    fn run(&mut self, data: &[u8], step: u32) {
        let claim = ImageClaim {
            encoding: Encoding::Bgr8,
            width: Some(W),
            height: Some(H),
            step: Some(step),
        };
        let desc = check_image(&claim, data, &self.pre.config().limits).unwrap();
        let input = ImageInput { desc, data };
        black_box(self.pre.run(&input, &mut self.out).unwrap());
    }
}

/// One timed batch of `n` decodes; returns ns per decode.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round) = if quick { (5, 20) } else { (31, 100) };
    let px = pixels();
    let cdr = cdr_payload(&px);
    let st = bytes::Bytes::from(safetensors_payload(&px));
    assert_eq!(Image::decode(&cdr).expect("decodes").data, px.as_slice());
    let (tensors, _) = wire::decode_safetensors(&st, usize::MAX).expect("decodes");
    assert_eq!(tensors[0].data.as_ref(), px.as_slice());

    let stage = RefCell::new(Stage::new());
    let att = format!("id=f1;seq=7;encoding=bgr8;width={W};height={H}");
    let rows: [Row; 6] = [
        (
            "safetensors decode (shared bytes)",
            Box::new(|| {
                black_box(wire::decode_safetensors(black_box(&st), usize::MAX).unwrap());
            }),
        ),
        (
            "CDR Image decode (borrowed pixels)",
            Box::new(|| {
                black_box(Image::decode(black_box(&cdr)).unwrap());
            }),
        ),
        (
            "CDR Image decode + copy to owned",
            Box::new(|| {
                let img = Image::decode(black_box(&cdr)).unwrap();
                black_box(img.data.to_vec());
            }),
        ),
        (
            "safetensors decode + image stage",
            Box::new(|| {
                let (t, _) = wire::decode_safetensors(black_box(&st), usize::MAX).unwrap();
                stage.borrow_mut().run(&t[0].data, W * 3);
            }),
        ),
        (
            "image message (attachment) + stage",
            Box::new(|| {
                let h = parse_image_attachment(black_box(att.as_bytes())).unwrap();
                black_box(&h.claim);
                stage.borrow_mut().run(&px, W * 3);
            }),
        ),
        (
            "CDR Image decode + image stage",
            Box::new(|| {
                let img = Image::decode(black_box(&cdr)).unwrap();
                stage.borrow_mut().run(img.data, img.step);
            }),
        ),
    ];
    let mut samples = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        for k in 0..rows.len() {
            let i = (k + round) % rows.len(); // rotate the order every round
            samples[i].push(time(per_round, &rows[i].1));
        }
    }
    let base = median(&mut samples[0].clone());
    println!(
        "ROS 2 Image ingress, {W}x{H} bgr8 ({} KiB pixels; CDR payload {} B, safetensors {} B)",
        px.len() / 1024,
        cdr.len(),
        st.len()
    );
    println!("{rounds} rounds x {per_round} decodes, medians of per-round means\n");
    println!(
        "| {:<36} | {:>12} | {:>16} |",
        "decoder", "median", "vs safetensors"
    );
    println!("|{:-<38}|{:->14}|{:->18}|", "", "", "");
    for (i, (name, _)) in rows.iter().enumerate() {
        let m = median(&mut samples[i]);
        println!("| {name:<36} | {:>9.2} µs | {:>15.3}x |", m / 1e3, m / base);
    }
}
