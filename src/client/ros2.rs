//! `reflexd-sim --ros2`: a stand-in ROS 2 robot for a daemon whose pipelines
//! have `[pipeline.ros2]` topics (config/ros2.toml). It sits outside the
//! daemon at both ends of its ROS data flow, speaking only what a ROS 2 node
//! on rmw_zenoh speaks: it publishes camera frames as `sensor_msgs/msg/Image`
//! (bgr8) and one prompt as `std_msgs/msg/String`, each sample with its
//! rmw_zenoh attachment, announces itself with liveliness tokens like any
//! node, and prints what comes back on the daemon's ROS output topics
//! (`Detection2DArray` text lines, answer token chunks, the final answer).
//! The topics, types and domain are read from the daemon's own config file,
//! so the two cannot disagree.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zenoh::Wait;

use super::frame::CameraFrame;
use crate::config::Config;
use crate::config::ros2::PipelineRos2;
use crate::ros2::liveliness::{EndpointInfo, EntityKind, NodeIdentity, Qos};
use crate::ros2::publisher::{gid_for_token, unix_nanos_now};
use crate::ros2::{
    Detection2DArray, Flavour, Header, Image, PublisherState, Ros2Endpoint, RosType, StringMsg,
    Time,
};

/// How long to wait for the daemon to subscribe to the camera topic (it
/// may still be loading its models).
const MATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// After the last frame, how long answers still in flight are waited for
/// (an OCR frame takes up to a few seconds on a busy CPU).
const DRAIN: f64 = 10.0;
/// After the last frame, how long a prompt's final answer is waited for.
const ANSWER_WAIT: f64 = 60.0;

/// What the stand-in robot does.
#[derive(Clone, Debug)]
pub struct RosSim {
    /// Camera frame: a PNG file, sent as bgr8 pixels.
    pub image: std::path::PathBuf,
    pub camera_hz: f64,
    pub seconds: f64,
    /// Sent once on the prompt topic after `prompt_after` seconds.
    pub prompt: Option<String>,
    pub prompt_after: f64,
}

/// What came back, for the exit status.
#[derive(Debug, Default)]
pub struct RosSummary {
    pub frames_sent: u64,
    pub detections: u64,
    pub answers: u64,
    pub errors: u64,
}

/// The daemon's ROS topics this robot talks to.
struct Topics<'a> {
    camera: Option<(&'a Ros2Endpoint, Option<&'a Ros2Endpoint>)>,
    prompt: Option<&'a PipelineRos2>,
    errors: Vec<&'a Ros2Endpoint>,
}

fn topics(config: &Config) -> Topics<'_> {
    let camera = config.pipelines.iter().find_map(|p| {
        let r = p.ros2.as_ref()?;
        let input = r.input.as_ref().filter(|e| e.ty == RosType::Image)?;
        Some((input, r.output.as_ref().map(|o| &o.endpoint)))
    });
    let prompt = config
        .generators
        .iter()
        .find_map(|g| g.ros2.as_ref().filter(|r| r.input.is_some()));
    let mut errors: Vec<&Ros2Endpoint> = Vec::new();
    let all = config.pipelines.iter().map(|p| p.ros2.as_ref());
    for r in all.chain(config.generators.iter().map(|g| g.ros2.as_ref())) {
        if let Some(e) = r.and_then(|r| r.error.as_ref()).map(|o| &o.endpoint)
            && !errors.iter().any(|x| x.topic == e.topic)
        {
            errors.push(e);
        }
    }
    Topics {
        camera,
        prompt,
        errors,
    }
}

/// This node's identity and the liveliness token of one of its endpoints;
/// publishers take their GID from it, as rmw_zenoh does.
struct Node {
    id: NodeIdentity,
    next: AtomicU64,
}

impl Node {
    fn token(&self, e: &Ros2Endpoint, kind: EntityKind) -> String {
        self.id.endpoint_token(&EndpointInfo {
            entity_id: self.next.fetch_add(1, Relaxed),
            kind,
            topic: &e.topic,
            type_name: &e.ty.dds_name(),
            type_hash: e.ty.type_hash(),
            qos: Qos::reliable(10),
        })
    }
}

fn now_stamp() -> Time {
    Time::from_unix_nanos(unix_nanos_now())
}

/// What a subscribed topic carries for this robot.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Prediction,
    Tokens,
    Answer,
    Error,
}

/// One received sample, printed; counted into `s`.
fn show(e: &Ros2Endpoint, role: Role, payload: &[u8], s: &mut RosSummary) {
    let topic = &e.topic;
    let line = match e.ty {
        RosType::Detection2DArray => match Detection2DArray::decode(payload) {
            Ok(d) => {
                s.detections += 1;
                let age = (unix_nanos_now() - d.header.stamp.to_unix_nanos()) as f64 / 1e6;
                let mut out = format!(
                    "{topic} [{}] frame {:?} stamped {age:.0} ms ago: {} lines",
                    e.ty,
                    d.header.frame_id,
                    d.detections.len()
                );
                for det in &d.detections {
                    let (b, r) = (&det.bbox, det.results.first());
                    out.push_str(&format!(
                        "\n    {:<32} {:.3}  centre ({:.0}, {:.0}) {:.0}x{:.0}",
                        format!("{:?}", r.map_or("", |r| r.hypothesis.class_id.as_str())),
                        r.map_or(0.0, |r| r.hypothesis.score),
                        b.center.position.x,
                        b.center.position.y,
                        b.size_x,
                        b.size_y
                    ));
                }
                out
            }
            Err(err) => format!("{topic}: cannot decode: {err}"),
        },
        _ => match StringMsg::decode(payload) {
            // Token chunks run on as text, the way a person reads them.
            Ok(m) if role == Role::Tokens => {
                print!("{}", m.data);
                let _ = std::io::Write::flush(&mut std::io::stdout());
                return;
            }
            Ok(m) => {
                match role {
                    Role::Answer => s.answers += 1,
                    Role::Error => s.errors += 1,
                    _ => s.detections += 1,
                }
                format!("\n{topic} [{}]: {}", e.ty, m.data)
            }
            Err(err) => format!("{topic}: cannot decode: {err}"),
        },
    };
    println!("{line}");
}

/// A ROS publisher of this node: its topic, zenoh publisher and attachment
/// state.
struct Outlet<'a> {
    endpoint: &'a Ros2Endpoint,
    publisher: zenoh::pubsub::Publisher<'static>,
    state: PublisherState,
}

impl Outlet<'_> {
    fn put(&self, payload: Vec<u8>, source_ns: i64) -> Result<(), String> {
        self.publisher
            .put(payload)
            .attachment(self.state.attachment_at(source_ns))
            .wait()
            .map_err(|e| e.to_string())
    }
}

/// The robot's declared entities: its camera and prompt publishers, the
/// subscribers printing the daemon's answers, its liveliness tokens.
struct Robot<'a> {
    camera: Outlet<'a>,
    prompt: Option<Outlet<'a>>,
    summary: Arc<Mutex<RosSummary>>,
    _subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    _tokens: Vec<zenoh::liveliness::LivelinessToken>,
}

impl<'a> Robot<'a> {
    fn declare(session: &zenoh::Session, config: &'a Config) -> Result<Robot<'a>, String> {
        let t = topics(config);
        let Some((camera, text)) = t.camera else {
            return Err("no pipeline reads a sensor_msgs/msg/Image [pipeline.ros2] input".into());
        };
        let domain = match camera.flavour {
            Flavour::RmwZenoh { domain } => domain,
            Flavour::Bridge { .. } => 0,
        };
        let node = Node {
            id: NodeIdentity {
                domain,
                zid: session.zid().to_string(),
                node_id: 0,
                enclave: "/".into(),
                namespace: "/".into(),
                name: "reflexd_sim".into(),
            },
            next: AtomicU64::new(1),
        };
        let ze = |e: zenoh::Error| e.to_string();
        let mut tokens = vec![node.id.node_token()];
        let summary = Arc::new(Mutex::new(RosSummary::default()));
        let mut reads: Vec<(&Ros2Endpoint, Role)> =
            text.map(|e| (e, Role::Prediction)).into_iter().collect();
        reads.extend(t.errors.iter().map(|e| (*e, Role::Error)));
        if let Some(r) = t.prompt {
            reads.extend(r.tokens.as_ref().map(|o| (&o.endpoint, Role::Tokens)));
            reads.extend(r.output.as_ref().map(|o| (&o.endpoint, Role::Answer)));
        }
        let mut subscribers = Vec::new();
        for (e, role) in reads {
            tokens.push(node.token(e, EntityKind::Subscription));
            let (e2, s2) = (e.clone(), summary.clone());
            let sub = session
                .declare_subscriber(e.subscribe_key())
                .callback(move |sample| {
                    let mut s = s2.lock().unwrap_or_else(|p| p.into_inner());
                    show(&e2, role, &sample.payload().to_bytes(), &mut s);
                })
                .wait()
                .map_err(ze)?;
            subscribers.push(sub);
        }
        let mut outlet = |endpoint: &'a Ros2Endpoint| -> Result<Outlet<'a>, String> {
            let token = node.token(endpoint, EntityKind::Publisher);
            let state = PublisherState::new(gid_for_token(&token));
            tokens.push(token);
            let publisher = session
                .declare_publisher(endpoint.publish_key())
                .wait()
                .map_err(ze)?;
            Ok(Outlet {
                endpoint,
                publisher,
                state,
            })
        };
        let camera = outlet(camera)?;
        let prompt = match t.prompt.and_then(|r| r.input.as_ref()) {
            Some(e) => Some(outlet(e)?),
            None => None,
        };
        let tokens = tokens
            .into_iter()
            .map(|t| session.liveliness().declare_token(t).wait().map_err(ze))
            .collect::<Result<_, _>>()?;
        Ok(Robot {
            camera,
            prompt,
            summary,
            _subscribers: subscribers,
            _tokens: tokens,
        })
    }

    /// Waits until the daemon subscribes to the camera topic: a daemon
    /// still loading its models would miss the first frames.
    async fn wait_for_daemon(&self) -> Result<(), String> {
        let waited = Instant::now();
        let cam = &self.camera;
        while !cam
            .publisher
            .matching_status()
            .wait()
            .map_err(|e| e.to_string())?
            .matching()
        {
            if waited.elapsed() > MATCH_TIMEOUT {
                return Err(format!(
                    "nobody subscribed to {} within {MATCH_TIMEOUT:?}: is the daemon running with this config?",
                    cam.endpoint.topic
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// One camera frame, stamped now (the stamp is also the attachment's
    /// source timestamp).
    fn send_frame(&self, f: &CameraFrame) -> Result<(), String> {
        let stamp = now_stamp();
        let img = Image {
            header: Header {
                stamp,
                frame_id: "camera".into(),
            },
            height: f.height,
            width: f.width,
            encoding: "bgr8".into(),
            is_bigendian: 0,
            step: f.step(),
            data: &f.bgr,
        };
        let payload = img.encode().map_err(|e| e.to_string())?;
        self.camera.put(payload, stamp.to_unix_nanos())
    }

    fn send_prompt(&self, text: &str) -> Result<bool, String> {
        let Some(p) = &self.prompt else {
            return Ok(false);
        };
        let msg = StringMsg { data: text.into() };
        let payload = msg.encode().map_err(|e| e.to_string())?;
        p.put(payload, unix_nanos_now()).map(|()| true)
    }

    /// Whether anything sent is still owed an answer, `elapsed` seconds after
    /// a `seconds`-long run.
    fn owed(&self, (frames, prompted): (u64, bool), elapsed: f64, seconds: f64) -> bool {
        let s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        let answer_due = prompted && s.answers == 0 && elapsed < seconds + ANSWER_WAIT;
        let frames_due = s.detections + s.errors < frames && elapsed < seconds + DRAIN;
        answer_due || frames_due
    }
}

/// Runs the robot on `session` for `sim.seconds`, then until every frame is
/// answered (at most [`DRAIN`] more seconds) and, with a prompt, its final
/// answer has arrived (at most [`ANSWER_WAIT`]).
pub async fn run(
    session: &zenoh::Session,
    config: &Config,
    sim: &RosSim,
) -> Result<RosSummary, String> {
    let robot = Robot::declare(session, config)?;
    let frame = CameraFrame::load_png(&sim.image)?;
    robot.wait_for_daemon().await?;
    let cam = robot.camera.endpoint;
    println!(
        "reflexd-sim --ros2 for {} s: {} ({}x{} bgr8) → {} [{}] at {} Hz{}",
        sim.seconds,
        sim.image.display(),
        frame.width,
        frame.height,
        cam.topic,
        cam.ty,
        sim.camera_hz,
        match (&robot.prompt, &sim.prompt) {
            (Some(p), Some(q)) => format!("; prompt {q:?} → {}", p.endpoint.topic),
            _ => String::new(),
        }
    );
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / sim.camera_hz);
    let mut next_frame = start;
    let (mut frames, mut prompted) = (0u64, false);
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if let (false, Some(q)) = (prompted, &sim.prompt)
            && elapsed >= sim.prompt_after
        {
            prompted = robot.send_prompt(q)?;
        }
        if elapsed >= sim.seconds && !robot.owed((frames, prompted), elapsed, sim.seconds) {
            break;
        }
        if Instant::now() >= next_frame && elapsed < sim.seconds {
            robot.send_frame(&frame)?;
            frames += 1;
            next_frame += period;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = std::mem::take(&mut *robot.summary.lock().unwrap_or_else(|p| p.into_inner()));
    s.frames_sent = frames;
    Ok(s)
}
