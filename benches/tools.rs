//! Tool-call acceptance and mask cost on the real SmolLM2-135M: `--requests`
//! varied requests (default 100, generated from a fixed seed: object,
//! coordinates, gripper action, stop reason and phrasing vary) each ask for
//! a tool. Every request runs twice on the same prompt, greedy: with the
//! llguidance constraint (`tool_choice: "required"`), then without it. A
//! call counts as valid when it parses, names an offered tool and passes
//! the gate (allow-list, JSON Schema); the table also says whether it is
//! faithful (right tool, coordinates within 5 mm, right gripper action) —
//! the grammar guarantees shape and bounds, not meaning. Timing: the mask
//! (compute + apply) of every constrained step against the model's decode
//! steps of the same run, p50/p99 and their ratio (target ≤ 10 %), plus the
//! grammar compile per request and the token environment build; the mask's
//! thread CPU time is shown beside its wall-clock time, because on a shared
//! machine the wall-clock tail is the thread being preempted. A short
//! `tool_choice: "auto"` run (`--auto N`) shows what the model chooses
//! when text is allowed and what a text-mode mask costs. Never fails on a
//! number. Run: `cargo bench --bench tools [-- --requests N --auto N
//! --threads T --seed S --no-unconstrained]`.

#[path = "../tests/tool_calls/driver.rs"]
mod driver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use driver::*;
use reflexd::llm::tools::gate::CallContext;
use reflexd::llm::tools::{Constrainer, ToolChoice, ToolGate, ToolSet};
use reflexd::wire::command::Message;

struct Args {
    requests: usize,
    threads: usize,
    seed: u64,
    unconstrained: bool,
    max_tokens: usize,
    auto: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        requests: 100,
        threads: 1,
        seed: 2026,
        unconstrained: true,
        max_tokens: 80,
        auto: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            let v = it.next().ok_or_else(|| anyhow!("{name} needs a value"))?;
            v.parse().map_err(|_| anyhow!("{name} {v:?}: not a number"))
        };
        match arg.as_str() {
            "--bench" => {}
            "--requests" => a.requests = num("--requests")?.clamp(1, 1000) as usize,
            "--threads" => a.threads = num("--threads")?.clamp(1, 16) as usize,
            "--seed" => a.seed = num("--seed")?,
            "--max-tokens" => a.max_tokens = num("--max-tokens")?.clamp(8, 512) as usize,
            "--no-unconstrained" => a.unconstrained = false,
            "--auto" => a.auto = num("--auto")?.min(100) as usize,
            "--help" | "-h" => {
                println!(
                    "usage: cargo bench --bench tools [-- --requests N --threads T --seed S --max-tokens M --no-unconstrained]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Tally {
    runs: usize,
    parsed: usize,
    valid: usize,
    right_tool: usize,
    faithful: usize,
    tokens: usize,
    keys: BTreeSet<String>,
}

impl Tally {
    fn row(&self, label: &str) {
        let p = |n: usize| 100.0 * n as f64 / self.runs.max(1) as f64;
        println!(
            "| {label:<13} | {:>5} | {:>6.1} % | {:>6.1} % | {:>8.1} % | {:>6.1} % | {:>6.1} |",
            self.runs,
            p(self.parsed),
            p(self.valid),
            p(self.right_tool),
            p(self.faithful),
            self.tokens as f64 / self.runs.max(1) as f64
        );
    }
}

/// Counts one outcome; a valid call goes through the gate as the daemon
/// would publish it, and the key it would be published on is recorded.
fn tally(t: &mut Tally, o: &Outcome, req: &Request, gate: &ToolGate, seq: u32, names: &[String]) {
    t.runs += 1;
    t.tokens += o.generated;
    let Ok(call) = &o.call else { return };
    t.parsed += 1;
    let ctx = CallContext {
        generation: "bench",
        seq,
        enabled: names,
        dry_run: false,
    };
    let Ok(admitted) = gate.admit(&ctx, call.clone(), Instant::now()) else {
        return;
    };
    t.valid += 1;
    if let Some((key, _)) = admitted.publication() {
        t.keys.insert(key.to_string());
    }
    let (tool, values) = faithful(req, call);
    t.right_tool += usize::from(tool);
    t.faithful += usize::from(values);
}

/// What the runs measured, across requests.
#[derive(Default)]
struct Timings {
    mask_us: Vec<f64>,
    mask_cpu_us: Vec<f64>,
    step_ms: Vec<f64>,
    compile_us: Vec<f64>,
    /// Wall-clock mask of the first step of each reply (fresh grammar).
    first_mask_us: Vec<f64>,
}

impl Timings {
    fn add(&mut self, o: &Outcome) {
        self.mask_us.extend_from_slice(&o.mask_us);
        self.mask_cpu_us.extend_from_slice(&o.mask_cpu_us);
        self.step_ms.extend_from_slice(&o.step_ms);
        if o.compile_us > 0.0 {
            self.compile_us.push(o.compile_us);
        }
        self.first_mask_us.extend(o.mask_us.first());
    }
}

struct Setup {
    model: Model,
    constrainer: Constrainer,
    set: Arc<ToolSet>,
    gate: ToolGate,
    names: Vec<String>,
}

fn user(text: &str) -> [Message; 1] {
    [Message {
        role: "user".into(),
        content: text.into(),
        name: None,
    }]
}

/// The acceptance run: every request constrained, then (optionally) not.
fn acceptance(s: &mut Setup, a: &Args, t: &mut Timings) -> Result<(Tally, Tally)> {
    let tools = s.set.select(&s.names)?;
    let (mut on, mut off) = (Tally::default(), Tally::default());
    let mut shown = 0;
    let reqs = requests(a.requests, a.seed);
    for (i, r) in reqs.iter().enumerate() {
        let msgs = user(&r.text);
        let req = ToolChoice::Required;
        let o = run_request(
            &mut s.model,
            &s.constrainer,
            &tools,
            &msgs,
            &req,
            true,
            a.max_tokens,
        )?;
        tally(&mut on, &o, r, &s.gate, i as u32, &s.names);
        t.add(&o);
        let unfaithful = !o.call.as_ref().is_ok_and(|c| faithful(r, c).1);
        if shown < 8 || (unfaithful && shown < 14) || o.call.is_err() {
            shown += 1;
            println!("  [{i:>3}] {:<66} -> {}", r.text, o.text);
        }
        if a.unconstrained {
            let o = run_request(
                &mut s.model,
                &s.constrainer,
                &tools,
                &msgs,
                &req,
                false,
                a.max_tokens,
            )?;
            tally(&mut off, &o, r, &s.gate, i as u32, &s.names);
            t.step_ms.extend_from_slice(&o.step_ms);
            if i < 3 {
                println!("        unconstrained -> {:?}", o.text);
            }
        }
        if (i + 1) % 10 == 0 {
            eprintln!("  {} / {} requests", i + 1, reqs.len());
        }
    }
    Ok((on, off))
}

/// `tool_choice: "auto"` on tool requests and plain questions: what the
/// model picks, and the cost of masks in text mode.
fn auto(s: &mut Setup, a: &Args) -> Result<()> {
    if a.auto == 0 {
        return Ok(());
    }
    let tools = s.set.select(&s.names)?;
    let questions = [
        "What is the capital of France?",
        "What can you do for me?",
        "How many legs does a spider have?",
        "Say hello to the operator.",
        "Which tools do you have?",
    ];
    let mut prompts: Vec<String> = requests(a.auto.div_ceil(2), a.seed + 1)
        .into_iter()
        .map(|r| r.text)
        .collect();
    prompts.extend(
        questions
            .iter()
            .cycle()
            .take(a.auto / 2)
            .map(|q| q.to_string()),
    );
    let (mut calls, mut texts, mut other) = (0, 0, 0);
    let mut t = Timings::default();
    for p in &prompts {
        let o = run_request(
            &mut s.model,
            &s.constrainer,
            &tools,
            &user(p),
            &ToolChoice::Auto,
            true,
            48,
        )?;
        t.add(&o);
        match &o.call {
            Ok(_) => calls += 1,
            Err(e) if e.code() == "tool_call_parse" => texts += 1,
            Err(_) => other += 1,
        }
        println!("  auto {p:<66} -> {:?}", o.text);
    }
    println!(
        "auto: {} prompts ({} tool requests, {} questions): {calls} calls, {texts} text replies, {other} other; mask CPU p50 {:.0} µs, p99 {:.0} µs",
        prompts.len(),
        a.auto.div_ceil(2),
        a.auto / 2,
        pct(&mut t.mask_cpu_us, 0.5),
        pct(&mut t.mask_cpu_us, 0.99)
    );
    Ok(())
}

fn report(on: &Tally, off: &Tally, a: &Args, t: &mut Timings, allowed: &BTreeSet<String>) {
    println!("\n| mode          | calls | parsed   | valid    | right tool | faithful | tokens |");
    println!("|---------------|-------|----------|----------|------------|----------|--------|");
    on.row("constrained");
    if a.unconstrained {
        off.row("unconstrained");
    }
    let outside = on
        .keys
        .union(&off.keys)
        .filter(|k| !allowed.contains(*k))
        .count();
    println!("publications on a key outside the allow-list: {outside}");
    let (m50, m99) = (pct(&mut t.mask_us, 0.5), pct(&mut t.mask_us, 0.99));
    let (mc50, mc99) = (pct(&mut t.mask_cpu_us, 0.5), pct(&mut t.mask_cpu_us, 0.99));
    let (s50, s99) = (pct(&mut t.step_ms, 0.5), pct(&mut t.step_ms, 0.99));
    let (c50, c99) = (pct(&mut t.compile_us, 0.5), pct(&mut t.compile_us, 0.99));
    let (f50, f99) = (
        pct(&mut t.first_mask_us, 0.5),
        pct(&mut t.first_mask_us, 0.99),
    );
    let ratio = |us: f64| 100.0 * us / (s50 * 1e3);
    println!("\n| per step                  | p50       | p99       |");
    println!("|---------------------------|-----------|-----------|");
    println!("| mask, wall clock          | {m50:>6.0} µs | {m99:>6.0} µs |");
    println!("| mask, thread CPU time     | {mc50:>6.0} µs | {mc99:>6.0} µs |");
    println!("| first mask of a reply     | {f50:>6.0} µs | {f99:>6.0} µs |");
    println!("| decode step (model run)   | {s50:>6.2} ms | {s99:>6.2} ms |");
    println!(
        "| mask wall / decode p50    | {:>7.2} % | {:>7.2} % |",
        ratio(m50),
        ratio(m99)
    );
    println!(
        "| mask CPU / decode p50     | {:>7.2} % | {:>7.2} % |",
        ratio(mc50),
        ratio(mc99)
    );
    println!("| grammar compile / request | {c50:>6.0} µs | {c99:>6.0} µs |");
    println!(
        "\n{} mask samples, {} decode steps; target: mask ≤ 10 % of a decode step",
        t.mask_us.len(),
        t.step_ms.len()
    );
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let t0 = Instant::now();
    let model = Model::load(&llm_dir(), a.threads)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let constrainer = model.constrainer()?;
    let env_ms = t0.elapsed().as_secs_f64() * 1e3;
    let set: Arc<ToolSet> = Arc::new(example_tools());
    let allowed: BTreeSet<String> = set.iter().map(|t| t.key.clone()).collect();
    let mut s = Setup {
        model,
        constrainer,
        gate: ToolGate::new(set.clone(), Instant::now()),
        names: set.iter().map(|t| t.name.clone()).collect(),
        set,
    };
    println!(
        "tools bench: {} requests (seed {}), {} ORT thread(s), model load {load_ms:.0} ms, token env {env_ms:.0} ms",
        a.requests, a.seed, a.threads
    );
    let mut t = Timings::default();
    let (on, off) = acceptance(&mut s, &a, &mut t)?;
    auto(&mut s, &a)?;
    report(&on, &off, &a, &mut t, &allowed);
    Ok(())
}
