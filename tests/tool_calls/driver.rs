//! A decode loop for tool-call acceptance runs, shared by
//! `tests/tool_calls.rs` and `benches/tools.rs`: the real converted
//! SmolLM2-135M straight on `ort` (the daemon's `LlmModel::step` samples
//! inside, so a mask cannot be put between its logits and its sampler
//! until the lead wires `CallSession` in), the daemon's own model files,
//! tokenizer, chat template and sampler, and the tool pieces exactly as the
//! daemon will call them: `mask_logits` → `sampling::sample` → `commit`.
//! Also the request generator: varied tool requests from a fixed seed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use reflexd::llm::sampling::{self, Rng, Sampling};
use reflexd::llm::tools::gate::parse_call;
use reflexd::llm::tools::{
    CallSession, Constrainer, ParsedCall, Progress, RawTool, ToolChoice, ToolError, ToolSet,
    ToolSpec, env, prompt,
};
use reflexd::llm::{LlmShared, ModelFiles};
use reflexd::wire::command::Message;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn llm_dir() -> PathBuf {
    let p = repo().join("models/llm/fetched");
    assert!(
        p.join("model.onnx").exists(),
        "{} missing: run `make setup` (scripts/provision.sh) first",
        p.display()
    );
    p
}

/// The example tools of `config/tools/`, as a config would declare them.
pub fn example_tools() -> ToolSet {
    let t = |name: &str, description: &str, key: &str| RawTool {
        name: name.into(),
        description: description.into(),
        schema: PathBuf::from(format!("config/tools/{name}.json")),
        key: key.into(),
        rate_per_s: Some(1000.0),
        burst: Some(100),
        dry_run: None,
    };
    ToolSet::load(
        "chat",
        &[
            t(
                "move_arm",
                "Move the gripper to a position (metres, arm base frame) and open, close or keep the gripper there.",
                "robot/arm/cmd",
            ),
            t(
                "stop_base",
                "Stop the mobile base immediately.",
                "robot/base/stop",
            ),
        ],
        &repo(),
    )
    .expect("example tools load")
}

/// The real model on one session, one sequence at a time.
pub struct Model {
    session: Session,
    pub shared: LlmShared,
    pub tokenizer_json: PathBuf,
    past: Vec<DynValue>,
    past_len: usize,
    past_names: Vec<String>,
    present_names: Vec<String>,
}

fn i64_tensor(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue> {
    Ok(Tensor::from_array((shape, data))
        .map_err(|e| anyhow!("i64 tensor: {e}"))?
        .into_dyn())
}

impl Model {
    /// `threads`: ORT intra-op threads (the daemon's default is 1 per worker).
    pub fn load(dir: &Path, threads: usize) -> Result<Model> {
        let files = ModelFiles::open(dir).map_err(|e| anyhow!(e))?;
        let shared = LlmShared::new(&files).map_err(|e| anyhow!(e))?;
        let (env, _) = reflexd::infer::runtime::environment(None)?;
        let b = Session::builder(&env).map_err(|e| anyhow!("session builder: {e}"))?;
        let b = b
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| anyhow!("{e}"))?;
        let b = b.with_intra_threads(threads).map_err(|e| anyhow!("{e}"))?;
        let mut b = b.with_inter_threads(1).map_err(|e| anyhow!("{e}"))?;
        let session = b
            .commit_from_file(&files.onnx)
            .map_err(|e| anyhow!("load {}: {e}", files.onnx.display()))?;
        let n = files.generation.num_layers;
        Ok(Model {
            session,
            shared,
            tokenizer_json: files.tokenizer.clone(),
            past: Vec::new(),
            past_len: 0,
            past_names: (0..n)
                .flat_map(|i| {
                    [
                        format!("past_key_values.{i}.key"),
                        format!("past_key_values.{i}.value"),
                    ]
                })
                .collect(),
            present_names: (0..n)
                .flat_map(|i| [format!("present.{i}.key"), format!("present.{i}.value")])
                .collect(),
        })
    }

    /// The constraint engine for this model's vocabulary.
    pub fn constrainer(&self) -> Result<Constrainer> {
        let g = &self.shared.generation;
        let env = env::token_env(
            &self.tokenizer_json,
            self.shared.tokenizer.clone(),
            &g.stop_token_ids,
            g.vocab_size,
        )?;
        Ok(Constrainer::new(env)?)
    }

    /// Runs `ids` after the cached positions; returns the last row of logits.
    fn run(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let s = ids.len();
        let total = self.past_len + s;
        let mut inputs: Vec<(&str, SessionInputValue)> = Vec::with_capacity(3 + self.past.len());
        inputs.push((
            "input_ids",
            i64_tensor([1, s], ids.iter().map(|&i| i64::from(i)).collect())?.into(),
        ));
        inputs.push((
            "attention_mask",
            i64_tensor([1, total], vec![1; total])?.into(),
        ));
        inputs.push((
            "position_ids",
            i64_tensor([1, s], (self.past_len as i64..total as i64).collect())?.into(),
        ));
        for (name, v) in self.past_names.iter().zip(self.past.drain(..)) {
            inputs.push((name.as_str(), v.into()));
        }
        let mut out = self.session.run(inputs).map_err(|e| anyhow!("run: {e}"))?;
        let (shape, data) = out
            .get("logits")
            .context("no logits")?
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("logits: {e}"))?;
        let vocab = *shape.last().context("logits shape")? as usize;
        let row = data[data.len() - vocab..].to_vec();
        for name in &self.present_names {
            self.past.push(
                out.remove(name)
                    .with_context(|| format!("missing {name}"))?,
            );
        }
        self.past_len = total;
        Ok(row)
    }

    /// Starts a new sequence with `prompt`; returns the logits for the first
    /// generated token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        let g = &self.shared.generation;
        let empty = [1usize, g.num_key_value_heads, 0, g.head_dim];
        self.past = (0..2 * g.num_layers)
            .map(|_| {
                DynTensor::new(&Allocator::default(), TensorElementType::Float32, empty)
                    .map(|t| t.into_dyn())
                    .map_err(|e| anyhow!("empty past: {e}"))
            })
            .collect::<Result<_>>()?;
        self.past_len = 0;
        self.run(prompt)
    }

    /// One decode step.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        self.run(&[token])
    }

    pub fn render(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.shared.generation.chat_template.render(messages);
        self.shared.encode(&text).map_err(|e| anyhow!(e))
    }
}

/// How one request went.
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    /// The call as parsed (constrained: from `commit`; unconstrained: from
    /// the finished text), or why there is none.
    pub call: Result<ParsedCall, ToolError>,
    pub prompt_tokens: usize,
    pub generated: usize,
    /// Per decode step: model run (ms) and mask computation + application
    /// (µs, wall clock and this thread's CPU time: on a shared machine the
    /// wall-clock tail is mostly the thread being preempted).
    pub step_ms: Vec<f64>,
    pub mask_us: Vec<f64>,
    pub mask_cpu_us: Vec<f64>,
    /// Grammar compile for this request (µs), constrained only.
    pub compile_us: f64,
}

/// Generates one reply to `messages` with `tools` offered; `constrained`
/// puts a `CallSession` between logits and sampler.
pub fn run_request(
    model: &mut Model,
    constrainer: &Constrainer,
    tools: &[&ToolSpec],
    messages: &[Message],
    choice: &ToolChoice,
    constrained: bool,
    max_tokens: usize,
) -> Result<Outcome> {
    let offered = if *choice == ToolChoice::None {
        &[][..]
    } else {
        tools
    };
    let prompt_ids = model.render(&prompt::with_tools(messages, offered))?;
    let t = Instant::now();
    let mut session: Option<CallSession> = if constrained {
        constrainer.session(tools, choice)?
    } else {
        None
    };
    let compile_us = t.elapsed().as_secs_f64() * 1e6;
    let stops = model.shared.generation.stop_token_ids.clone();
    let params = Sampling::default();
    let mut rng = Rng::new(0);
    let mut scratch = sampling::Scratch::default();
    let mut history = prompt_ids.clone();
    let mut out_ids: Vec<u32> = Vec::new();
    let (mut step_ms, mut mask_us, mut mask_cpu_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut logits = model.prefill(&prompt_ids)?;
    let mut call: Option<Result<ParsedCall, ToolError>> = None;
    while out_ids.len() < max_tokens {
        if let Some(s) = session.as_mut() {
            let (t, cpu) = (Instant::now(), thread_cpu_us());
            s.mask_logits(&mut logits)?;
            mask_us.push(t.elapsed().as_secs_f64() * 1e6);
            mask_cpu_us.push(thread_cpu_us() - cpu);
        }
        let token = sampling::sample(&mut logits, &history, &params, &mut rng, &mut scratch);
        history.push(token);
        if let Some(s) = session.as_mut() {
            match s.commit(token) {
                Ok(Progress::Call(c)) => {
                    out_ids.push(token);
                    call = Some(Ok(c));
                    break;
                }
                Ok(Progress::End) => break,
                Ok(_) => {}
                Err(e) => {
                    call = Some(Err(e));
                    break;
                }
            }
        }
        if stops.contains(&token) {
            break;
        }
        out_ids.push(token);
        let text = model.shared.decode(&out_ids);
        if !constrained && text.contains("</tool_call>") {
            break;
        }
        let t = Instant::now();
        logits = model.step(token)?;
        step_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let text = model.shared.decode(&out_ids);
    let call = match (call, session.as_ref()) {
        (Some(c), _) => c,
        (None, Some(s)) => s
            .finish()
            .and(Err(ToolError::Parse("the reply is text".into()))),
        (None, None) => parse_call(&text),
    };
    Ok(Outcome {
        text,
        call,
        prompt_tokens: prompt_ids.len(),
        generated: out_ids.len(),
        step_ms,
        mask_us,
        mask_cpu_us,
        compile_us,
    })
}

/// CPU time this thread has used, in µs.
pub fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// One generated request and what a faithful call would contain.
#[derive(Clone, Debug)]
pub struct Request {
    pub text: String,
    pub tool: &'static str,
    /// move_arm: x, y, z asked for, and the gripper action.
    pub xyz: Option<[f64; 3]>,
    pub gripper: Option<&'static str>,
}

const OBJECTS: [&str; 10] = [
    "red cube",
    "blue ball",
    "green bottle",
    "yellow sponge",
    "screwdriver",
    "coffee mug",
    "small box",
    "apple",
    "wooden block",
    "tennis ball",
];
const PICK: [&str; 4] = [
    "Pick up the {o} at x={x}, y={y}, z={z}.",
    "The {o} is at x {x} m, y {y} m, height {z} m. Grab it.",
    "Move the gripper to ({x}, {y}, {z}) and close it on the {o}.",
    "Grasp the {o}: it lies at x={x} y={y} z={z}.",
];
const PLACE: [&str; 3] = [
    "Put the {o} down at x={x}, y={y}, z={z} and open the gripper.",
    "Release the {o} at position x: {x}, y: {y}, z: {z}.",
    "Drop the {o} at x={x} y={y} z={z}.",
];
const KEEP: [&str; 2] = [
    "Move the arm to x={x}, y={y}, z={z} without changing the gripper.",
    "Carry the {o} to x {x}, y {y}, z {z}, keep holding it.",
];
const STOP: [&str; 4] = [
    "Stop the base, {r}.",
    "Emergency: halt the mobile base now, {r}.",
    "Please stop driving, {r}.",
    "Brake the base immediately because {r}.",
];
const REASONS: [&str; 5] = [
    "a person is in the way",
    "the battery is low",
    "there is an obstacle ahead",
    "the operator pressed stop",
    "the floor is wet",
];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[(rng.next_f32() * xs.len() as f32) as usize % xs.len()]
}

/// A value inside `[lo, hi]`, in centimetres (two decimals), as a person
/// would say it.
fn coord(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    let v = lo + (hi - lo) * f64::from(rng.next_f32());
    (v * 100.0).round() / 100.0
}

/// `n` requests from `seed`: three quarters move the arm (pick, place or
/// carry, varied object, position and phrasing), a quarter stop the base.
pub fn requests(n: usize, seed: u64) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            if rng.next_f32() < 0.25 {
                let t = pick(&mut rng, &STOP).replace("{r}", pick(&mut rng, &REASONS));
                return Request {
                    text: t,
                    tool: "stop_base",
                    xyz: None,
                    gripper: None,
                };
            }
            let (x, y, z) = (
                coord(&mut rng, -0.5, 0.5),
                coord(&mut rng, -0.5, 0.5),
                coord(&mut rng, 0.02, 0.6),
            );
            let r = rng.next_f32();
            let (templates, gripper): (&[&str], _) = if r < 0.5 {
                (&PICK, "close")
            } else if r < 0.8 {
                (&PLACE, "open")
            } else {
                (&KEEP, "keep")
            };
            let text = pick(&mut rng, templates)
                .replace("{o}", pick(&mut rng, &OBJECTS))
                .replace("{x}", &x.to_string())
                .replace("{y}", &y.to_string())
                .replace("{z}", &z.to_string());
            Request {
                text,
                tool: "move_arm",
                xyz: Some([x, y, z]),
                gripper: Some(gripper),
            }
        })
        .collect()
}

/// Does a validated call say what the request asked for? (Right tool; for
/// move_arm the coordinates within 5 mm and the gripper action.)
pub fn faithful(req: &Request, call: &ParsedCall) -> (bool, bool) {
    let tool = call.name == req.tool;
    let values = tool
        && match req.xyz {
            None => true,
            Some(xyz) => {
                let a = &call.arguments;
                ["x", "y", "z"]
                    .iter()
                    .zip(xyz)
                    .all(|(k, v)| a[*k].as_f64().is_some_and(|got| (got - v).abs() < 0.005))
                    && a["gripper"].as_str() == req.gripper
            }
        };
    (tool, values)
}

pub fn check(cond: bool, what: &str) -> Result<()> {
    if cond { Ok(()) } else { bail!("{what}") }
}
