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
//! grammar compile per request and the token environment build. Never fails
//! on a number. Run: `cargo bench --bench tools [-- --requests N --threads T
//! --seed S --no-unconstrained]`.

#[path = "../tests/tool_calls/driver.rs"]
mod driver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use driver::*;
use reflexd::llm::command::Message;
use reflexd::llm::tools::gate::CallContext;
use reflexd::llm::tools::{ToolChoice, ToolGate, ToolSet};

struct Args {
    requests: usize,
    threads: usize,
    seed: u64,
    unconstrained: bool,
    max_tokens: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        requests: 100,
        threads: 1,
        seed: 2026,
        unconstrained: true,
        max_tokens: 80,
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
            "| {label:<13} | {:>5} | {:>6.1} % | {:>6.1} % | {:>6.1} % | {:>6.1} % | {:>6.1} |",
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

fn main() -> Result<()> {
    let a = parse_args()?;
    let t = Instant::now();
    let mut model = Model::load(&llm_dir(), a.threads)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let c = model.constrainer()?;
    let env_ms = t.elapsed().as_secs_f64() * 1e3;
    let set: Arc<ToolSet> = Arc::new(example_tools());
    let gate = ToolGate::new(set.clone(), Instant::now());
    let names: Vec<String> = set.iter().map(|t| t.name.clone()).collect();
    let tools = set.select(&names)?;
    let allowed: BTreeSet<String> = set.iter().map(|t| t.key.clone()).collect();
    println!(
        "tools bench: {} requests (seed {}), {} ORT thread(s), model load {load_ms:.0} ms, token env {env_ms:.0} ms",
        a.requests, a.seed, a.threads
    );
    let reqs = requests(a.requests, a.seed);
    let (mut on, mut off) = (Tally::default(), Tally::default());
    let (mut mask_us, mut step_ms, mut compile_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut shown = 0;
    for (i, r) in reqs.iter().enumerate() {
        let msgs = [Message {
            role: "user".into(),
            content: r.text.clone(),
        }];
        let o = run_request(
            &mut model,
            &c,
            &tools,
            &msgs,
            &ToolChoice::Required,
            true,
            a.max_tokens,
        )?;
        tally(&mut on, &o, r, &gate, i as u32, &names);
        mask_us.extend_from_slice(&o.mask_us);
        step_ms.extend_from_slice(&o.step_ms);
        compile_us.push(o.compile_us);
        let unfaithful = !o.call.as_ref().is_ok_and(|c| faithful(r, c).1);
        if shown < 8 || (unfaithful && shown < 14) || o.call.is_err() {
            shown += 1;
            println!("  [{i:>3}] {:<66} -> {}", r.text, o.text);
        }
        if a.unconstrained {
            let o = run_request(
                &mut model,
                &c,
                &tools,
                &msgs,
                &ToolChoice::Required,
                false,
                a.max_tokens,
            )?;
            tally(&mut off, &o, r, &gate, i as u32, &names);
            step_ms.extend_from_slice(&o.step_ms);
            if i < 3 {
                println!("        unconstrained -> {:?}", o.text);
            }
        }
        if (i + 1) % 10 == 0 {
            eprintln!("  {} / {} requests", i + 1, reqs.len());
        }
    }
    println!("\n| mode          | calls | parsed   | valid    | right tool | faithful | tokens |");
    println!("|---------------|-------|----------|----------|----------|----------|--------|");
    on.row("constrained");
    if a.unconstrained {
        off.row("unconstrained");
    }
    let outside: Vec<&String> = on
        .keys
        .union(&off.keys)
        .filter(|k| !allowed.contains(*k))
        .collect();
    println!(
        "publications on a key outside the allow-list: {}",
        outside.len()
    );
    let (m50, m99) = (pct(&mut mask_us, 0.5), pct(&mut mask_us, 0.99));
    let (s50, s99) = (pct(&mut step_ms, 0.5), pct(&mut step_ms, 0.99));
    let (c50, c99) = (pct(&mut compile_us, 0.5), pct(&mut compile_us, 0.99));
    println!("\n| per step                 | p50       | p99       |");
    println!("|--------------------------|-----------|-----------|");
    println!("| mask (compute + apply)   | {m50:>6.0} µs | {m99:>6.0} µs |");
    println!("| decode step (model run)  | {s50:>6.2} ms | {s99:>6.2} ms |");
    println!(
        "| mask / decode step       | {:>7.2} % | {:>7.2} % |",
        100.0 * m50 / (s50 * 1e3),
        100.0 * m99 / (s50 * 1e3)
    );
    println!("| grammar compile / request| {c50:>6.0} µs | {c99:>6.0} µs |");
    println!(
        "\n{} mask samples, {} decode steps; target: mask p50 and p99 ≤ 10 % of a decode step (p99 column is mask p99 / step p50)",
        mask_us.len(),
        step_ms.len()
    );
    Ok(())
}
