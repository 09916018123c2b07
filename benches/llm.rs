//! LLM generation benchmark (issue 15): reflexd's time to first token
//! (TTFT), time per output token (TPOT) and CPU time per token against the
//! engines it competes with, on the same SmolLM2-135M (Q4_1 GGUF, and its
//! int8-activation conversion), the same chat prompts and greedy decoding,
//! measured in one process run in interleaved rounds because this shared
//! VM drifts and only side-by-side ratios mean anything.
//!
//! Contenders, per intra-op thread count (1 and 2 by default):
//! - reflexd, the daemon in-process (one worker) with a pipeline per
//!   configuration — speculation off / prompt lookup / draft model,
//!   prefix cache on / off, exact conversion, continuous batching — driven
//!   by a zenoh client over loopback (127.0.0.1, scouting off) that stamps
//!   each token message on receipt;
//! - the bare Rust `ort` loop (a fresh KV cache per step, all logits);
//! - a Python onnxruntime loop and onnxruntime-genai 0.18.0 (children,
//!   `benches/llm_peers.py`);
//! - llama.cpp: `llama-bench` prefill and decode at the prompt's depth, and
//!   `llama-simple`'s greedy answer (built on demand, scripts/llama-cpp.sh).
//!
//! Prompts: A, a story request (prompt lookup rarely applies), and B, a
//! copy-this-paragraph request (it does). Then: continuous batching (1 vs 8
//! streams, int8), tokens against the exact reference, and TPOT against
//! generated length (plot). Prints Markdown; never fails on a number.
//! `cargo bench --bench llm [-- --help]`.

#[path = "llm/contenders.rs"]
mod contenders;
#[path = "common/harness.rs"]
mod harness;
#[path = "llm/peers.rs"]
mod peers;
#[path = "common/plot.rs"]
mod plot;
#[path = "llm/report.rs"]
mod report;
#[path = "llm/scenarios.rs"]
mod scenarios;
#[path = "llm/summary.rs"]
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use contenders::{Bare, Pipe, Reflexd};
use harness::utc_now;
use peers::{LlamaCpp, Peer};
use report::{Results, Run};
use summary::{length_curve, stage};

/// Prompt lookup rarely applies to a story.
const PROMPT_A: &str = "Tell me a long story about a robot.";
/// The answer quotes the prompt: lookup drafts are mostly accepted.
const PROMPT_B: &str = "Copy this paragraph word for word: The robot walked slowly through the quiet city at night. It looked at the dark windows and the empty streets, and it wondered where all the people had gone. Then it sat down on a bench near the old fountain and waited for the sun to rise over the hills.";
const USAGE: &str = "\
usage: cargo bench --bench llm [-- OPTIONS]
  --threads 1,2    intra-op thread counts (default 1,2)
  --rounds N       measured rounds per thread count (default 5; one warm-up round first)
  --tokens N       tokens per generation (default 64)
  --streams N      concurrent streams of the batching scenario (default 8)
  --curve N        tokens of the TPOT-vs-length curve (default 512; 0 skips it)
  --no-python --no-genai --no-llama   skip those peers
  --plots DIR      where the SVG plot goes (default benches/results)";

struct Args {
    threads: Vec<usize>,
    rounds: usize,
    tokens: usize,
    streams: usize,
    curve: usize,
    python: bool,
    genai: bool,
    llama: bool,
    plots: PathBuf,
}

fn count(v: Option<String>, what: &str, max: usize) -> Result<usize> {
    let v = v.ok_or_else(|| anyhow!("{what} needs a value"))?;
    let n: usize = v
        .parse()
        .map_err(|_| anyhow!("{what} {v:?}: not a count"))?;
    if n > max {
        bail!("{what} {n}: at most {max}");
    }
    Ok(n)
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            threads: vec![1, 2],
            rounds: 5,
            tokens: 64,
            streams: 8,
            curve: 512,
            python: true,
            genai: true,
            llama: true,
            plots: harness::repo().join("benches/results"),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--bench" => {}
                "--threads" => {
                    let v = it
                        .next()
                        .ok_or_else(|| anyhow!("--threads needs a value"))?;
                    a.threads = v
                        .split(',')
                        .map(|t| t.trim().parse().ok().filter(|&n| (1..=16).contains(&n)))
                        .collect::<Option<_>>()
                        .ok_or_else(|| anyhow!("--threads {v:?}: expected e.g. 1,2"))?;
                }
                "--rounds" => a.rounds = count(it.next(), "--rounds", 100)?.max(1),
                "--tokens" => a.tokens = count(it.next(), "--tokens", 512)?.max(8),
                "--streams" => a.streams = count(it.next(), "--streams", 8)?.max(2),
                "--curve" => a.curve = count(it.next(), "--curve", 2000)?,
                "--no-python" => a.python = false,
                "--no-genai" => a.genai = false,
                "--no-llama" => a.llama = false,
                "--plots" => {
                    a.plots =
                        PathBuf::from(it.next().ok_or_else(|| anyhow!("--plots needs a dir"))?)
                }
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(a)
    }
}

/// Everything found or built once before the rounds.
struct Setup {
    env: ort::environment::Environment,
    int8: PathBuf,
    exact: PathBuf,
    draft: Option<PathBuf>,
    venv_python: PathBuf,
    genai: Option<(PathBuf, PathBuf)>,
    llama: Option<LlamaCpp>,
}

fn setup(a: &Args) -> Result<Setup> {
    let repo = harness::repo();
    let cache =
        reflexd::infer::runtime::cache_dir().ok_or_else(|| anyhow!("no cache directory"))?;
    let venv_python = cache.join("venv/bin/python");
    let (env, lib) = reflexd::infer::runtime::environment(None)?;
    println!("{}; ORT {}", harness::machine_line(), lib.display());
    let int8 = repo.join("models/llm/fetched");
    let exact = repo.join("models/llm/fetched-exact");
    for d in [&int8, &exact] {
        if !d.join("model.onnx").exists() {
            bail!("{} missing: run `make setup`", d.display());
        }
    }
    let draft_dir = cache.join("llm/draft2-fetched");
    let draft = peers::run_bounded(
        Command::new(&venv_python)
            .arg(repo.join("models/llm/make_draft.py"))
            .arg(&int8)
            .arg(&draft_dir)
            .args(["--layers", "2"]),
        Duration::from_secs(300),
    )?
    .map(|_| draft_dir);
    let genai = if a.genai {
        match peers::genai_python(&cache, &venv_python) {
            Ok(py) => Some((
                py,
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llm-genai-model"),
            )),
            Err(e) => {
                println!("skipping onnxruntime-genai: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let llama = if a.llama {
        match LlamaCpp::find(&repo, cache.join("llm/SmolLM2-135M-Instruct.Q4_1.gguf")) {
            Ok(l) => Some(l),
            Err(e) => {
                println!("skipping llama.cpp: {e:#}");
                None
            }
        }
    } else {
        None
    };
    Ok(Setup {
        env,
        int8,
        exact,
        draft,
        venv_python,
        genai,
        llama,
    })
}

fn pipes(s: &Setup) -> Vec<Pipe> {
    let p = |name, dir: &Path, extra: &str| Pipe {
        name,
        model: dir.display().to_string(),
        extra: extra.to_string(),
    };
    let mut v = vec![
        p("plain", &s.int8, "speculation = \"off\""),
        p("spec", &s.int8, "speculation = \"prompt_lookup\""),
        p(
            "cold",
            &s.int8,
            "speculation = \"off\"\nprefix_cache_tokens = 0",
        ),
        p("exact", &s.exact, "speculation = \"off\""),
        p("exactspec", &s.exact, "speculation = \"prompt_lookup\""),
        p(
            "batch",
            &s.int8,
            "speculation = \"off\"\nmax_generations = 8\nmax_batch = 8",
        ),
    ];
    if let Some(d) = &s.draft {
        let extra = format!(
            "speculation = \"draft\"\ndraft_model = \"{}\"\ndraft_tokens = 3",
            d.display()
        );
        v.push(p("draft", &s.int8, &extra));
    }
    v
}

/// One thing a round runs.
enum Job {
    Daemon(&'static str, &'static str),
    Bare(&'static str),
    Peer(usize, &'static str),
    LlamaPrefill(usize),
    LlamaDecode(usize),
}

/// The contenders of one thread count.
struct Stage<'a> {
    threads: usize,
    tokens: usize,
    reflexd: Reflexd,
    bare: Bare,
    /// Each question and the chat-templated text the bare loop reads.
    texts: Vec<(&'static str, String)>,
    peers: Vec<Peer>,
    llama: Option<&'a LlamaCpp>,
}

impl Stage<'_> {
    fn run(&mut self, job: &Job) -> Result<Run> {
        let n = self.tokens;
        match *job {
            Job::Daemon(pipe, p) => self.reflexd.generate(pipe, p, n),
            Job::Bare(q) => {
                let text = self
                    .texts
                    .iter()
                    .find(|(k, _)| *k == q)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                self.bare.generate(&text, n, false).map(|r| r.0)
            }
            Job::Peer(i, p) => self.peers[i].generate(p),
            Job::LlamaPrefill(len) => {
                let b = self.llama.ok_or_else(|| anyhow!("no llama.cpp"))?.bench(
                    self.threads,
                    len,
                    0,
                    0,
                )?;
                Ok(Run {
                    ttft_ms: b.ms,
                    tpot_ms: f64::NAN,
                    ..Run::default()
                })
            }
            Job::LlamaDecode(depth) => {
                let b = self.llama.ok_or_else(|| anyhow!("no llama.cpp"))?.bench(
                    self.threads,
                    0,
                    n,
                    depth,
                )?;
                Ok(Run {
                    ttft_ms: f64::NAN,
                    tpot_ms: b.ms,
                    ..Run::default()
                })
            }
        }
    }
}

fn spawn_peers(s: &Setup, a: &Args, threads: usize) -> Vec<Peer> {
    let script = harness::repo().join("benches/llm_peers.py");
    let args = |engine: &str, dir: &Path| -> Vec<String> {
        [
            script.display().to_string(),
            "--engine".into(),
            engine.into(),
            "--model-dir".into(),
            dir.display().to_string(),
        ]
        .into_iter()
        .chain([
            "--threads".into(),
            threads.to_string(),
            "--tokens".into(),
            a.tokens.to_string(),
            "--max-seconds".into(),
            "3600".into(),
        ])
        .collect()
    };
    let mut v = Vec::new();
    if a.python {
        match Peer::spawn("python", &s.venv_python, &args("ort", &s.int8)) {
            Ok(p) => v.push(p),
            Err(e) => println!("skipping the Python loop: {e:#}"),
        }
    }
    if let Some((py, dir)) = &s.genai {
        let write = Command::new(&s.venv_python)
            .arg(&script)
            .args([
                "--model-dir",
                &s.int8.display().to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .arg("--write-genai-config")
            .arg(dir)
            .status();
        match write.map_err(anyhow::Error::from).and_then(|st| {
            if st.success() {
                Peer::spawn("genai", py, &args("genai", dir))
            } else {
                Err(anyhow!("genai_config.json not written"))
            }
        }) {
            Ok(p) => v.push(p),
            Err(e) => println!("skipping onnxruntime-genai: {e:#}"),
        }
    }
    v
}

/// Rounds of every job of one thread count, in rotating order.
fn rounds(st: &mut Stage, jobs: &[(String, Job)], n: usize, res: &mut Results) -> Result<()> {
    for round in 0..=n {
        for k in 0..jobs.len() {
            let (key, job) = &jobs[(round + k) % jobs.len()];
            std::thread::sleep(Duration::from_millis(150));
            match st.run(job) {
                Ok(r) if round > 0 => res.push(key, r),
                Ok(_) => {}
                Err(e) => println!("  {key}: {e:#}"),
            }
        }
        println!("  round {round}/{n} done");
    }
    Ok(())
}

fn jobs(
    st: &Stage,
    len_a: usize,
    len_b: usize,
    draft: bool,
) -> (Vec<(String, Job)>, BTreeMap<String, String>) {
    let mut j: Vec<(String, String, Job)> = vec![
        (
            "r-plain-A".into(),
            "reflexd int8, prompt A".into(),
            Job::Daemon("plain", PROMPT_A),
        ),
        (
            "r-spec-A".into(),
            "reflexd int8 + prompt lookup, prompt A".into(),
            Job::Daemon("spec", PROMPT_A),
        ),
        (
            "r-cold-A".into(),
            "reflexd int8, prefix cache off, prompt A".into(),
            Job::Daemon("cold", PROMPT_A),
        ),
        (
            "r-plain-B".into(),
            "reflexd int8, prompt B".into(),
            Job::Daemon("plain", PROMPT_B),
        ),
        (
            "r-spec-B".into(),
            "reflexd int8 + prompt lookup, prompt B".into(),
            Job::Daemon("spec", PROMPT_B),
        ),
        (
            "bare-A".into(),
            "bare Rust ort loop (copying KV, all logits), prompt A".into(),
            Job::Bare(PROMPT_A),
        ),
    ];
    if draft {
        j.push((
            "r-draft-B".into(),
            "reflexd int8 + 2-layer draft model, prompt B".into(),
            Job::Daemon("draft", PROMPT_B),
        ));
    }
    for (i, p) in st.peers.iter().enumerate() {
        let label = match p.name.as_str() {
            "python" => "Python onnxruntime loop, prompt A".to_string(),
            _ => format!("onnxruntime-genai {}, prompt A", peers::GENAI_VERSION),
        };
        j.push((format!("{}-A", p.name), label, Job::Peer(i, PROMPT_A)));
    }
    if st.llama.is_some() {
        j.push((
            "llama-pp-A".into(),
            format!("llama.cpp llama-bench prefill {len_a} tokens"),
            Job::LlamaPrefill(len_a),
        ));
        j.push((
            "llama-tg-A".into(),
            format!("llama.cpp llama-bench decode at depth {len_a}"),
            Job::LlamaDecode(len_a),
        ));
        j.push((
            "llama-tg-B".into(),
            format!("llama.cpp llama-bench decode at depth {len_b}"),
            Job::LlamaDecode(len_b),
        ));
    }
    let labels = j.iter().map(|(k, l, _)| (k.clone(), l.clone())).collect();
    (j.into_iter().map(|(k, _, job)| (k, job)).collect(), labels)
}

fn main() -> Result<()> {
    let a = Args::parse()?;
    let started = Instant::now();
    let s = setup(&a)?;
    println!(
        "date: {}; prompts: A {PROMPT_A:?}, B {:?}…; {} greedy tokens; {} rounds",
        utc_now(),
        &PROMPT_B[..40],
        a.tokens,
        a.rounds
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    for &t in &a.threads {
        stage(&s, &a, &rt, t)?;
    }
    if a.curve > 0 {
        length_curve(&s, &a)?;
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
