//! The Rust contenders of `cargo bench --bench llm`: reflexd itself — the
//! daemon in-process with one pipeline per configuration under test, driven
//! by a zenoh client over loopback that stamps each token message on
//! receipt — and the bare Rust `ort` loop: the same session options, the
//! way a decode loop is written without reflexd (a fresh `present.*` per
//! step fed back as `past_key_values.*`, logits of every position, argmax).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam::channel::{self, Receiver};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use reflexd::llm::sampling::argmax;
use reflexd::{Config, Daemon};
use serde_json::{Value, json};
use zenoh::Wait;
use zenoh::qos::CongestionControl;

use crate::harness;
use crate::report::Run;

const GEN_TIMEOUT: Duration = Duration::from_secs(180);

/// One pipeline of the daemon under test: its name and config keys.
pub struct Pipe {
    pub name: &'static str,
    pub model: String,
    pub extra: String,
}

/// Messages as they arrived: receipt instant and payload.
type Stamped = Receiver<(Instant, Vec<u8>)>;

/// The daemon and a client.
pub struct Reflexd {
    _daemon: Daemon,
    client: zenoh::Session,
    msgs: Stamped,
    _sub: zenoh::pubsub::Subscriber<()>,
    next: usize,
}

fn pipeline_toml(p: &Pipe) -> String {
    format!(
        r#"
        [[pipeline]]
        name = "{n}"
        kind = "generate"
        model = "{m}"
        input = "bench/llm/{n}/cmd"
        output = "bench/llm/{n}/out"
        max_tokens = 1024
        {e}
        "#,
        n = p.name,
        m = p.model,
        e = p.extra
    )
}

impl Reflexd {
    /// Starts a daemon (one worker, `threads` intra-op threads) with
    /// `pipes`, and waits until each answers.
    pub fn start(rt: &tokio::runtime::Runtime, threads: usize, pipes: &[Pipe]) -> Result<Reflexd> {
        let port = harness::free_port()?;
        let mut toml = format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n[runtime]\nintra_op_threads = {threads}\n"
        );
        for p in pipes {
            toml.push_str(&pipeline_toml(p));
        }
        let cfg = Config::from_toml(&toml, &harness::repo()).context("daemon config")?;
        let daemon = rt.block_on(Daemon::start(cfg)).context("daemon start")?;
        let client = rt.block_on(harness::client(port))?;
        let (tx, msgs) = channel::unbounded();
        let sub = client
            .declare_subscriber("bench/llm/*/out/**")
            .callback(move |s| {
                let _ = tx.send((Instant::now(), s.payload().to_bytes().into_owned()));
            })
            .wait()
            .map_err(|e| anyhow!("subscriber: {e}"))?;
        let mut r = Reflexd {
            _daemon: daemon,
            client,
            msgs,
            _sub: sub,
            next: 0,
        };
        for p in pipes {
            r.until_ready(p.name)?;
        }
        Ok(r)
    }

    fn send(&self, pipe: &str, id: &str, prompt: &str, max_tokens: usize) -> Result<()> {
        let cmd = json!({"id": id, "prompt": prompt, "max_tokens": max_tokens});
        self.client
            .put(format!("bench/llm/{pipe}/cmd"), cmd.to_string())
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| anyhow!("command put: {e}"))
    }

    /// One-token probes until one is answered (subscriptions propagate).
    fn until_ready(&mut self, pipe: &str) -> Result<()> {
        for i in 0..60 {
            self.send(pipe, &format!("probe-{pipe}-{i}"), "Hi", 1)?;
            if self.msgs.recv_timeout(Duration::from_millis(500)).is_ok() {
                std::thread::sleep(Duration::from_millis(300));
                while self.msgs.try_recv().is_ok() {}
                return Ok(());
            }
        }
        bail!("pipeline {pipe} never answered")
    }

    fn id(&mut self) -> String {
        self.next += 1;
        format!("b{}", self.next)
    }

    /// One generation, alone.
    pub fn generate(&mut self, pipe: &str, prompt: &str, n: usize) -> Result<Run> {
        let mut v = self.generate_many(pipe, &[prompt], n)?;
        Ok(v.remove(0).0)
    }

    /// Sends one command per prompt at once and collects every stream: each
    /// one's run (its TTFT from the common start) and wall time of all.
    pub fn generate_many(
        &mut self,
        pipe: &str,
        prompts: &[&str],
        n: usize,
    ) -> Result<Vec<(Run, Duration)>> {
        while self.msgs.try_recv().is_ok() {}
        let ids: Vec<String> = prompts.iter().map(|_| self.id()).collect();
        let t0 = Instant::now();
        for (id, p) in ids.iter().zip(prompts) {
            self.send(pipe, id, p, n)?;
        }
        let mut times: Vec<Vec<Instant>> = vec![Vec::new(); ids.len()];
        let mut toks: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
        let mut finals: Vec<Option<(Value, Instant)>> = vec![None; ids.len()];
        let until = t0 + GEN_TIMEOUT;
        while finals.iter().any(|f| f.is_none()) {
            let left = until.saturating_duration_since(Instant::now());
            let (at, bytes) = self
                .msgs
                .recv_timeout(left)
                .map_err(|_| anyhow!("{pipe}: no final message in time"))?;
            let v: Value = serde_json::from_slice(&bytes)?;
            let Some(i) = ids.iter().position(|id| v["id"] == id.as_str()) else {
                continue;
            };
            if v["done"] == true {
                if v["finish_reason"] == "error" {
                    bail!("{pipe}: generation failed: {v}");
                }
                finals[i] = Some((v, at));
            } else if let Some(t) = v["token_id"].as_u64() {
                times[i].push(at);
                toks[i].push(t as u32);
            }
        }
        Ok(finals
            .into_iter()
            .zip(times.iter().zip(toks))
            .map(|(f, (times, ids))| {
                let (v, at) = f.expect("every final arrived");
                let mut r = Run::from_times(t0, times, ids);
                let g = |p: &str| v.pointer(p).and_then(Value::as_f64);
                r.cpu_ms_per_token = g("/cost/cpu_ms_per_token");
                r.acceptance = g("/speculation/acceptance");
                r.tokens_per_verify = g("/speculation/tokens_per_verify");
                r.tpot_gain = g("/speculation/tpot_gain");
                r.cached_prompt_tokens = g("/usage/cached_prompt_tokens");
                (r, at - t0)
            })
            .collect())
    }
}

/// The bare Rust ORT loop (copying KV, every position's logits).
pub struct Bare {
    session: Session,
    tokenizer: tokenizers::Tokenizer,
    layers: usize,
    heads: usize,
    head_dim: usize,
    stops: Vec<u32>,
}

fn i64s(shape: [usize; 2], v: Vec<i64>) -> Result<DynValue> {
    Ok(Tensor::from_array((shape, v))?.into_dyn())
}

impl Bare {
    pub fn new(env: &Environment, dir: &Path, threads: usize) -> Result<Bare> {
        let e = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("{e}");
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(e)?
            .with_intra_threads(threads)
            .map_err(e)?
            .with_inter_threads(1)
            .map_err(e)?
            .with_intra_op_spinning(false)
            .map_err(e)?
            .commit_from_file(dir.join("model.onnx"))?;
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("{e}"))?;
        let files = reflexd::llm::ModelFiles::open(dir).map_err(|e| anyhow!(e))?;
        let g = &files.generation;
        Ok(Bare {
            session,
            tokenizer,
            layers: g.num_layers,
            heads: g.num_key_value_heads,
            head_dim: g.head_dim,
            stops: g.stop_token_ids.clone(),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    /// Greedy generation of up to `n` tokens of `text` (stop tokens end it
    /// unless `ignore_stops`); the run, and each step's duration.
    pub fn generate(
        &mut self,
        text: &str,
        n: usize,
        ignore_stops: bool,
    ) -> Result<(Run, Vec<f64>)> {
        let t0 = Instant::now();
        let prompt = self.encode(text)?;
        let empty = [1usize, self.heads, 0, self.head_dim];
        let mut past: Vec<DynValue> = (0..2 * self.layers)
            .map(|_| {
                Ok(
                    DynTensor::new(&Allocator::default(), TensorElementType::Float32, empty)?
                        .into_dyn(),
                )
            })
            .collect::<Result<_>>()?;
        let (mut input, mut len) = (prompt, 0usize);
        let (mut ids, mut times, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        while ids.len() < n {
            let s = input.len();
            let mut inputs: Vec<(String, SessionInputValue)> = vec![
                (
                    "input_ids".into(),
                    i64s([1, s], input.iter().map(|&t| i64::from(t)).collect())?.into(),
                ),
                (
                    "attention_mask".into(),
                    i64s([1, len + s], vec![1; len + s])?.into(),
                ),
                (
                    "position_ids".into(),
                    i64s([1, s], (len as i64..(len + s) as i64).collect())?.into(),
                ),
            ];
            for (i, v) in std::mem::take(&mut past).into_iter().enumerate() {
                let kv = if i % 2 == 0 { "key" } else { "value" };
                inputs.push((format!("past_key_values.{}.{kv}", i / 2), v.into()));
            }
            let ts = Instant::now();
            let mut o = self.session.run(inputs)?;
            for i in 0..2 * self.layers {
                let kv = if i % 2 == 0 { "key" } else { "value" };
                past.push(
                    o.remove(format!("present.{}.{kv}", i / 2))
                        .context("present")?,
                );
            }
            let (shape, logits) = o["logits"].try_extract_tensor::<f32>()?;
            let vocab = *shape.last().context("logits shape")? as usize;
            let t = argmax(&logits[logits.len() - vocab..]) as u32;
            drop(o);
            steps.push(ts.elapsed().as_secs_f64() * 1e3);
            len += s;
            if !ignore_stops && self.stops.contains(&t) {
                break;
            }
            ids.push(t);
            times.push(Instant::now());
            input = vec![t];
        }
        Ok((Run::from_times(t0, &times, ids), steps))
    }
}
