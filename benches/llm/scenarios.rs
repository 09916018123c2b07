//! The scenarios of `cargo bench --bench llm` beyond one request at a time:
//! continuous batching (one stream against eight concurrent streams on the
//! same pipeline, alternating), and TPOT against generated length — the
//! reflexd decode loop (library, in place) against the bare copying loop
//! over hundreds of tokens, drawn as a plot for BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use ort::environment::Environment;
use reflexd::Config;
use reflexd::llm::{self, Generation, LlmShared, ModelFiles};
use reflexd::wire::command::{self, CommandLimits};

use crate::contenders::{Bare, Reflexd};
use crate::report::{median, quantile};

/// Sequential single streams against `streams` at once, in alternating
/// rounds, on a batching pipeline.
pub struct BatchResult {
    pub single_tps: Vec<f64>,
    pub batched_tps: Vec<f64>,
    pub single_tpot: Vec<f64>,
    pub batched_tpot: Vec<f64>,
    pub single_cpu: Vec<f64>,
    pub batched_cpu: Vec<f64>,
}

impl BatchResult {
    pub fn markdown(&self, streams: usize, threads: usize) -> String {
        let m = median;
        let mut o = String::new();
        let agg = m(&self.batched_tps) / m(&self.single_tps);
        let tpot = m(&self.batched_tpot) / m(&self.single_tpot);
        let _ = writeln!(
            o,
            "| streams | aggregate tok/s | TPOT p50 ms | TPOT p99 ms | CPU ms/token |"
        );
        let _ = writeln!(o, "|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| 1 | {:.1} | {:.2} | {:.2} | {:.2} |",
            m(&self.single_tps),
            m(&self.single_tpot),
            quantile(&self.single_tpot, 0.99),
            m(&self.single_cpu)
        );
        let _ = writeln!(
            o,
            "| {streams} | {:.1} | {:.2} | {:.2} | {:.2} |",
            m(&self.batched_tps),
            m(&self.batched_tpot),
            quantile(&self.batched_tpot, 0.99),
            m(&self.batched_cpu)
        );
        let _ = writeln!(
            o,
            "\n{threads} thread(s): aggregate ×{agg:.2} (target ≥ ×3: {}), per-stream TPOT ×{tpot:.2} (target ≤ ×2: {}), CPU per token ×{:.2}",
            crate::report::verdict(3.0 / agg, 1.0),
            crate::report::verdict(tpot, 2.0),
            m(&self.batched_cpu) / m(&self.single_cpu)
        );
        o
    }
}

pub fn batching(
    r: &mut Reflexd,
    pipe: &str,
    prompt: &str,
    n: usize,
    streams: usize,
    rounds: usize,
) -> Result<BatchResult> {
    let mut b = BatchResult {
        single_tps: vec![],
        batched_tps: vec![],
        single_tpot: vec![],
        batched_tpot: vec![],
        single_cpu: vec![],
        batched_cpu: vec![],
    };
    let many: Vec<&str> = vec![prompt; streams];
    for round in 0..=rounds {
        let one = r.generate_many(pipe, &[prompt], n)?;
        let all = r.generate_many(pipe, &many, n)?;
        if round == 0 {
            continue; // warm-up
        }
        let tps = |v: &[(crate::report::Run, Duration)]| {
            let toks: usize = v.iter().map(|(r, _)| r.ids.len()).sum();
            let wall = v.iter().map(|(_, d)| *d).max().unwrap_or_default();
            toks as f64 / wall.as_secs_f64()
        };
        b.single_tps.push(tps(&one));
        b.batched_tps.push(tps(&all));
        for (run, _) in &one {
            b.single_tpot.push(run.tpot_ms);
            b.single_cpu.extend(run.cpu_ms_per_token);
        }
        for (run, _) in &all {
            b.batched_tpot.push(run.tpot_ms);
            b.batched_cpu.extend(run.cpu_ms_per_token);
        }
    }
    Ok(b)
}

/// Step times (ms) of the reflexd decode loop over `n` tokens of `prompt`
/// with stop tokens disabled (so every run reaches `n`), in process.
pub fn engine_steps(
    env: &Environment,
    dir: &Path,
    threads: usize,
    prompt: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let toml = format!(
        "[runtime]\nintra_op_threads = {threads}\n[[pipeline]]\nname = \"curve\"\nkind = \"generate\"\nmodel = \"{}\"\ninput = \"c/cmd\"\noutput = \"c/out\"\nmax_tokens = {n}\nspeculation = \"off\"\n",
        dir.display()
    );
    let cfg = Config::from_toml(&toml, &crate::harness::repo())?;
    let files = ModelFiles::open(dir).map_err(|e| anyhow!(e))?;
    let mut shared = LlmShared::new(&files).map_err(|e| anyhow!(e))?;
    shared.generation.stop_token_ids.clear();
    let shared = Arc::new(shared);
    let (mut m, _) = llm::load(env, &cfg.generators[0], &cfg.runtime, &shared, &files.onnx)?;
    let limits = CommandLimits {
        max_tokens: n as u32,
        default_max_tokens: n as u32,
        max_prompt_chars: 4096,
        max_messages: 4,
        default_deadline: Duration::from_secs(3600),
    };
    let body = serde_json::json!({"id": "curve", "prompt": prompt, "max_tokens": n});
    let cmd = command::parse(body.to_string().as_bytes(), &limits).map_err(|e| anyhow!("{e}"))?;
    let ids = shared
        .prompt_ids(&cmd.messages, 4096)
        .map_err(|e| anyhow!("{e}"))?;
    let mut g = Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        0,
        ids,
    );
    let mut steps = Vec::with_capacity(n);
    while g.finished.is_none() {
        let decoding = g.is_decoding();
        let t = Instant::now();
        m.step(&mut g, usize::MAX).map_err(|e| anyhow!(e))?;
        if decoding {
            steps.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(steps)
}

/// Medians of `steps` over windows of `w` positions: (position, ms).
pub fn windows(steps: &[f64], w: usize) -> Vec<(f64, f64)> {
    steps
        .chunks(w)
        .enumerate()
        .map(|(i, c)| ((i * w + c.len() / 2) as f64, median(c)))
        .collect()
}

/// The length curve: reflexd's loop and the bare copying loop, alternately
/// `rounds` times; the per-position medians of each.
pub fn curve(
    env: &Environment,
    dir: &Path,
    threads: usize,
    prompt: &str,
    n: usize,
    rounds: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut bare = Bare::new(env, dir, threads)?;
    let text = llm_prompt_text(dir, prompt)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(engine_steps(env, dir, threads, prompt, n)?);
        theirs.push(bare.generate(&text, n - 1, true)?.1.split_off(1));
    }
    let per_pos = |runs: &[Vec<f64>]| -> Vec<f64> {
        let len = runs.iter().map(Vec::len).min().unwrap_or(0);
        (0..len)
            .map(|i| median(&runs.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect()
    };
    Ok((per_pos(&ours), per_pos(&theirs)))
}

/// The chat-templated text reflexd builds for `{"prompt": question}`.
pub fn llm_prompt_text(dir: &Path, question: &str) -> Result<String> {
    let files = ModelFiles::open(dir).map_err(|e| anyhow!(e))?;
    let msg = reflexd::wire::command::Message {
        role: "user".into(),
        content: question.into(),
        name: None,
    };
    Ok(files.generation.chat_template.render(&[msg]))
}
