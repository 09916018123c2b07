//! The stages of `cargo bench --bench llm`: one per intra-op thread count
//! (interleaved rounds of every contender, the ratio table against the
//! targets, tokens against the exact reference, continuous batching) and
//! the TPOT-against-length curve, printed as Markdown for BENCHMARKS.md.

use std::fmt::Write as _;

use anyhow::Result;

use crate::contenders::{Bare, Reflexd};
use crate::harness::utc_now;
use crate::report::{self, Cpu, Results, Run, common_prefix, median, verdict};
use crate::{Args, PROMPT_A, PROMPT_B, Setup, Stage, jobs, pipes, rounds, scenarios, spawn_peers};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One thread count: rounds, ratios, token checks, batching.
pub fn stage(s: &Setup, a: &Args, rt: &tokio::runtime::Runtime, t: usize) -> Result<()> {
    println!(
        "\n## {t} intra-op thread(s) — {}, load {}",
        utc_now(),
        loadavg()
    );
    let reflexd = Reflexd::start(rt, t, &pipes(s))?;
    let bare = Bare::new(&s.env, &s.int8, t)?;
    let text_a = scenarios::llm_prompt_text(&s.int8, PROMPT_A)?;
    let text_b = scenarios::llm_prompt_text(&s.int8, PROMPT_B)?;
    let (len_a, len_b) = (bare.encode(&text_a)?.len(), bare.encode(&text_b)?.len());
    let peers = spawn_peers(s, a, t);
    let mut st = Stage {
        threads: t,
        tokens: a.tokens,
        reflexd,
        bare,
        texts: vec![(PROMPT_A, text_a), (PROMPT_B, text_b)],
        peers,
        llama: s.llama.as_ref(),
    };
    let (jobs, labels) = jobs(&st, len_a, len_b, s.draft.is_some());
    let pids: Vec<u32> = st.peers.iter().map(|p| p.pid()).collect();
    let c0 = Cpu::now(&pids);
    let mut res = Results::default();
    rounds(&mut st, &jobs, a.rounds, &mut res)?;
    let c1 = Cpu::now(&pids);
    println!(
        "\nprompt A {len_a} tokens, prompt B {len_b} tokens; other processes used {:.2} cores on average during the rounds (load {})\n",
        c0.others_since(&c1),
        loadavg()
    );
    println!("{}", report::table(&res, &labels));
    println!("{}", ratios(&res, t));
    println!("{}", tokens_check(&mut st, s, &res)?);
    let b = scenarios::batching(&mut st.reflexd, "batch", PROMPT_A, a.tokens, a.streams, 2)?;
    println!(
        "### Continuous batching, int8, prompt A, {t} thread(s)\n\n{}",
        b.markdown(a.streams, t)
    );
    println!("{}", cost_summary(&res, &b));
    Ok(())
}

/// Ratio rows: reflexd against llama.cpp and the other loops.
fn ratios(res: &Results, t: usize) -> String {
    let tpot = |r: &Run| r.tpot_ms;
    let ttft = |r: &Run| r.ttft_ms;
    let mut o = String::new();
    let _ = writeln!(o, "### Ratios, {t} thread(s)\n");
    let _ = writeln!(
        o,
        "| comparison | by medians | paired by round | target | verdict |"
    );
    let _ = writeln!(o, "|---|---:|---:|---|---|");
    type Row<'a> = (&'a str, &'a str, &'a str, fn(&Run) -> f64, Option<f64>);
    let rows: [Row; 11] = [
        (
            "TPOT: reflexd + lookup, A / llama.cpp decode",
            "r-spec-A",
            "llama-tg-A",
            tpot,
            Some(1.0),
        ),
        (
            "TPOT: reflexd + lookup, B / llama.cpp decode",
            "r-spec-B",
            "llama-tg-B",
            tpot,
            Some(0.8),
        ),
        (
            "TPOT: reflexd no speculation, A / llama.cpp decode",
            "r-plain-A",
            "llama-tg-A",
            tpot,
            None,
        ),
        (
            "TPOT: reflexd no speculation, B / llama.cpp decode",
            "r-plain-B",
            "llama-tg-B",
            tpot,
            None,
        ),
        (
            "TPOT: reflexd + draft model, B / llama.cpp decode",
            "r-draft-B",
            "llama-tg-B",
            tpot,
            None,
        ),
        (
            "TTFT: reflexd (warm prefix cache), A / llama.cpp prefill",
            "r-plain-A",
            "llama-pp-A",
            ttft,
            Some(0.5),
        ),
        (
            "TTFT: reflexd (prefix cache off), A / llama.cpp prefill",
            "r-cold-A",
            "llama-pp-A",
            ttft,
            Some(0.5),
        ),
        (
            "TPOT: reflexd, A / bare Rust ort loop",
            "r-plain-A",
            "bare-A",
            tpot,
            None,
        ),
        (
            "TTFT: reflexd (prefix cache off), A / bare Rust ort loop",
            "r-cold-A",
            "bare-A",
            ttft,
            None,
        ),
        (
            "TPOT: reflexd, A / Python onnxruntime loop",
            "r-plain-A",
            "python-A",
            tpot,
            None,
        ),
        (
            "TPOT: reflexd, A / onnxruntime-genai",
            "r-plain-A",
            "genai-A",
            tpot,
            None,
        ),
    ];
    for (what, x, y, f, target) in rows {
        if res.get(x).is_empty() || res.get(y).is_empty() {
            continue;
        }
        let by_med = res.med(x, f) / res.med(y, f);
        let paired = res.paired(x, y, f);
        let (tgt, v) = match target {
            Some(l) => (format!("≤ {l}"), verdict(by_med.max(paired), l).to_string()),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(o, "| {what} | {by_med:.3} | {paired:.3} | {tgt} | {v} |");
    }
    o
}

/// Tokens against the exact reference (bare loop on the exact conversion)
/// and the int8 form against the bare loop and llama.cpp.
fn tokens_check(st: &mut Stage, s: &Setup, res: &Results) -> Result<String> {
    let mut o = String::new();
    let n = st.tokens;
    let mut exact = Bare::new(&s.env, &s.exact, st.threads)?;
    let _ = writeln!(o, "### Tokens, {} thread(s)\n", st.threads);
    for (q, text) in st.texts.clone() {
        let reference = exact.generate(&text, n, false)?.0.ids;
        for pipe in ["exact", "exactspec"] {
            let ids = st.reflexd.generate(pipe, q, n)?.ids;
            let same = ids == reference;
            let _ = writeln!(
                o,
                "- reflexd `{pipe}` (exact conversion{}) on {:?}…: {} tokens, {} the exact reference loop's ({} common)",
                if pipe == "exactspec" {
                    ", prompt lookup"
                } else {
                    ""
                },
                &q[..20],
                ids.len(),
                if same {
                    "**identical to**"
                } else {
                    "DIFFERENT from"
                },
                common_prefix(&ids, &reference)
            );
        }
    }
    let first = |k: &str| {
        res.get(k)
            .first()
            .map(|r| r.ids.clone())
            .unwrap_or_default()
    };
    let (plain_a, bare_a) = (first("r-plain-A"), first("bare-A"));
    let _ = writeln!(
        o,
        "- int8, prompt A: reflexd (in place) vs bare copying loop: {} of {} tokens in common; lookup-speculated B vs plain B: {} of {}",
        common_prefix(&plain_a, &bare_a),
        plain_a.len(),
        common_prefix(&first("r-spec-B"), &first("r-plain-B")),
        first("r-plain-B").len()
    );
    if let Some(l) = st.llama {
        let (_, text) = &st.texts[0];
        match l.greedy_text(text, n) {
            Ok(t) => {
                let ids = st.bare.encode(&t)?;
                let _ = writeln!(
                    o,
                    "- int8, prompt A vs llama.cpp `llama-simple` (re-tokenized): {} of {} tokens in common (int8 rounding differs from llama.cpp's; see models/llm/README.md § Numerics)",
                    common_prefix(&plain_a, &ids),
                    ids.len().min(plain_a.len())
                );
            }
            Err(e) => {
                let _ = writeln!(o, "- llama-simple: {e:#}");
            }
        }
    }
    Ok(o)
}

/// CPU time per token: what batching and speculation do to it.
fn cost_summary(res: &Results, b: &scenarios::BatchResult) -> String {
    let cpu = |k: &str| {
        median(
            &res.get(k)
                .iter()
                .filter_map(|r| r.cpu_ms_per_token)
                .collect::<Vec<_>>(),
        )
    };
    format!(
        "### CPU time per output token (reflexd's own figure, final messages)\n\n\
         | case | CPU ms/token |\n|---|---:|\n\
         | prompt A, no speculation | {:.2} |\n| prompt A, prompt lookup | {:.2} |\n\
         | prompt B, no speculation | {:.2} |\n| prompt B, prompt lookup | {:.2} |\n| prompt B, draft model | {:.2} |\n\
         | prompt A, 1 stream on the batching pipeline | {:.2} |\n| prompt A, batched streams | {:.2} |\n",
        cpu("r-plain-A"),
        cpu("r-spec-A"),
        cpu("r-plain-B"),
        cpu("r-spec-B"),
        cpu("r-draft-B"),
        median(&b.single_cpu),
        median(&b.batched_cpu)
    )
}

/// TPOT against generated length: reflexd's decode loop (in place) and the
/// bare copying loop, plotted.
pub fn length_curve(s: &Setup, a: &Args) -> Result<()> {
    let t = a.threads[0];
    println!(
        "\n## TPOT against generated length, {} tokens, {t} thread(s), int8, stop tokens ignored",
        a.curve
    );
    let (ours, theirs) = scenarios::curve(&s.env, &s.int8, t, PROMPT_A, a.curve, 2)?;
    let w = 32;
    let (po, pt) = (scenarios::windows(&ours, w), scenarios::windows(&theirs, w));
    std::fs::create_dir_all(&a.plots)?;
    let path = a.plots.join("llm-tpot-vs-length.svg");
    crate::plot::lines(
        &path,
        &format!("Decode step time by position, SmolLM2-135M int8, {t} thread(s)"),
        "generated tokens",
        "ms per step (median of 32 positions, 2 runs)",
        &[
            ("reflexd (KV in place)", &po),
            ("bare ort loop (new KV each step)", &pt),
        ],
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    println!("plot: {}\n", path.display());
    println!("| positions | reflexd ms/step | bare copying loop ms/step |\n|---|---:|---:|");
    for (x, y) in po.iter().zip(&pt) {
        println!("| {:.0} | {:.2} | {:.2} |", x.0, x.1, y.1);
    }
    let first_last =
        |v: &[(f64, f64)]| v.last().map_or(f64::NAN, |l| l.1) / v.first().map_or(f64::NAN, |f| f.1);
    println!(
        "\nlast window / first window: reflexd ×{:.2}, bare copying loop ×{:.2}",
        first_last(&po),
        first_last(&pt)
    );
    Ok(())
}
