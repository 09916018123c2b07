//! The decode loop against the real SmolLM2-135M (exact conversion, so token
//! equality is a fair test), driven through the library without zenoh:
//! the in-place KV cache with `num_logits_to_keep` gives the tokens of a
//! plain ONNX Runtime loop that copies the cache every step; speculative
//! decoding (prompt lookup) and the prefix cache change how many model runs
//! a generation takes, never its tokens; decode batches whose members join
//! and leave at different steps give each member its solo tokens.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use reflexd::Config;
use reflexd::llm::{self, DecodeSlots, Generation, LlmModel, LlmShared, ModelFiles};
use reflexd::wire::command::{self, CommandLimits};

/// A worker's model for a generate pipeline with `extra` config keys.
fn model(dir: &str, extra: &str) -> (LlmModel, Arc<LlmShared>) {
    let text = format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{dir}"
        input = "t/cmd"
        output = "t/out"
        prefill_chunk = 16
        {extra}
        "#
    );
    let config = Config::from_toml(&text, &common::repo()).expect("config");
    let g = &config.generators[0];
    let (env, _) = reflexd::infer::runtime::environment(None).expect("onnxruntime");
    let files = ModelFiles::open(Path::new(dir)).unwrap();
    let shared = Arc::new(LlmShared::new(&files).unwrap());
    let (m, _) = llm::load(&env, g, &config.runtime, &shared, &files.onnx).expect("load");
    (m, shared)
}

fn generation(shared: &LlmShared, prompt: &str, max_tokens: u32) -> Box<Generation> {
    let body = serde_json::json!({"id": "t", "prompt": prompt, "max_tokens": max_tokens});
    let limits = CommandLimits {
        max_tokens: 512,
        default_max_tokens: 64,
        max_prompt_chars: 4096,
        max_messages: 8,
        default_deadline: Duration::from_secs(600),
    };
    let cmd = command::parse(body.to_string().as_bytes(), &limits).unwrap();
    let ids = shared.prompt_ids(&cmd.messages, 2048).unwrap();
    Box::new(Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        0,
        ids,
    ))
}

/// Steps a generation alone to its end; its tokens and the number of
/// model runs it took.
fn run_alone(m: &mut LlmModel, g: &mut Generation) -> (Vec<u32>, usize) {
    let mut runs = 0;
    while g.finished.is_none() {
        m.step(g, usize::MAX).expect("step");
        runs += 1;
    }
    (g.tokens.clone(), runs)
}

fn greedy(dir: &str, extra: &str, prompt: &str, n: u32) -> (Vec<u32>, usize, Box<Generation>) {
    let (mut m, shared) = model(dir, extra);
    let mut g = generation(&shared, prompt, n);
    let (t, runs) = run_alone(&mut m, &mut g);
    (t, runs, g)
}

/// The loop before issue 15, in a few lines: every step feeds the previous
/// step's `present.*` back as `past_key_values.*` (ONNX Runtime allocates
/// a new cache each step) and takes the argmax of all of the logits' last
/// position.
fn reference_loop(dir: &str, prompt: &[u32], n: usize, stops: &[u32]) -> Vec<u32> {
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    let mut s = Session::builder(&env)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_file(Path::new(dir).join("model.onnx"))
        .unwrap();
    let files = ModelFiles::open(Path::new(dir)).unwrap();
    let g = &files.generation;
    let mut past: Vec<DynValue> = (0..2 * g.num_layers)
        .map(|_| {
            let shape = [1usize, g.num_key_value_heads, 0, g.head_dim];
            DynTensor::new(
                &ort::memory::Allocator::default(),
                TensorElementType::Float32,
                shape,
            )
            .unwrap()
            .into_dyn()
        })
        .collect();
    let i64s = |shape: [usize; 2], v: Vec<i64>| Tensor::from_array((shape, v)).unwrap().into_dyn();
    let (mut input, mut len, mut out) = (prompt.to_vec(), 0usize, Vec::new());
    while out.len() < n {
        let s_len = input.len();
        let mut inputs: Vec<(String, SessionInputValue)> = vec![
            (
                "input_ids".into(),
                i64s([1, s_len], input.iter().map(|&t| t as i64).collect()).into(),
            ),
            (
                "attention_mask".into(),
                i64s([1, len + s_len], vec![1; len + s_len]).into(),
            ),
            (
                "position_ids".into(),
                i64s([1, s_len], (len as i64..(len + s_len) as i64).collect()).into(),
            ),
        ];
        for (i, v) in std::mem::take(&mut past).into_iter().enumerate() {
            let kv = if i % 2 == 0 { "key" } else { "value" };
            inputs.push((format!("past_key_values.{}.{kv}", i / 2), v.into()));
        }
        let mut o = s.run(inputs).unwrap();
        for i in 0..2 * g.num_layers {
            let kv = if i % 2 == 0 { "key" } else { "value" };
            past.push(o.remove(format!("present.{}.{kv}", i / 2)).unwrap());
        }
        let (_, logits) = o["logits"].try_extract_tensor::<f32>().unwrap();
        let last = &logits[logits.len() - g.vocab_size..];
        let t = llm::sampling::argmax(last) as u32;
        len += s_len;
        if stops.contains(&t) {
            break;
        }
        out.push(t);
        input = vec![t];
    }
    out
}

#[test]
fn in_place_cache_gives_the_tokens_of_a_copying_loop() {
    let dir = common::llm_dir();
    let (mut m, shared) = model(&dir, "speculation = \"off\"\nprefix_cache_tokens = 0");
    let mut g = generation(&shared, "Tell me a long story about a robot.", 40);
    let prompt = shared.prompt_ids(&g.cmd.messages, 2048).unwrap();
    let (tokens, runs) = run_alone(&mut m, &mut g);
    assert_eq!(tokens.len(), 40, "runs past 40 tokens without a stop");
    assert_eq!(
        runs,
        prompt.len().div_ceil(16) + 39,
        "one prefill chunk or decode step per run"
    );
    let stops = &shared.generation.stop_token_ids;
    assert_eq!(tokens, reference_loop(&dir, &prompt, 40, stops));
}

/// Prompts whose answers quote their prompts (lookup finds drafts) and one
/// whose answer does not.
const LOOKUP_PROMPTS: [&str; 3] = [
    "Repeat the following sentence exactly, three times: The quick brown fox jumps over the lazy dog near the river bank.",
    "Here is a list: apples, oranges, bananas, grapes, pears, plums. Write the same list again, in the same order.",
    "What is the capital of France?",
];

#[test]
fn prompt_lookup_speculation_gives_exactly_the_greedy_tokens() {
    let dir = common::llm_dir();
    let (mut plain, shared) = model(&dir, "speculation = \"off\"");
    let (mut spec, _) = model(&dir, "speculation = \"prompt_lookup\"\ndraft_tokens = 4");
    let (mut accepted, mut saved) = (0, 0);
    for p in LOOKUP_PROMPTS {
        let (a, a_runs) = run_alone(&mut plain, &mut generation(&shared, p, 48));
        let mut g = generation(&shared, p, 48);
        let (b, b_runs) = run_alone(&mut spec, &mut g);
        assert_eq!(a, b, "prompt {p:?}: speculation changed the tokens");
        accepted += g.spec.accepted;
        saved += a_runs.saturating_sub(b_runs);
        assert_eq!(
            g.spec.verify_tokens as usize + g.spec.plain_steps as usize + 1,
            b.len() + usize::from(g.finished == Some(llm::Finish::Stop)),
            "every token came from the prefill, a plain step or a verify"
        );
    }
    assert!(
        accepted > 0,
        "lookup drafts were accepted on quoting prompts"
    );
    assert!(saved > 0, "speculation took fewer model runs");
}

#[test]
fn prefix_cache_skips_the_shared_prefix_and_keeps_the_tokens() {
    let dir = common::llm_dir();
    let prompt = "What is the capital of France?";
    let (cold, _, g0) = greedy(
        &dir,
        "prefix_cache_tokens = 0\nspeculation = \"off\"",
        prompt,
        16,
    );
    assert_eq!(g0.cached_tokens, 0);
    let (mut m, shared) = model(&dir, "prefix_cache_tokens = 512\nspeculation = \"off\"");
    let mut g1 = generation(&shared, prompt, 16);
    let (warm, _) = run_alone(&mut m, &mut g1);
    assert_eq!(warm, cold, "a prefix from the cache gives the same answer");
    assert!(
        g1.cached_tokens >= 20,
        "the system turn was cached at warm-up: {}",
        g1.cached_tokens
    );
    // The same prompt again: all of it but its last token is cached.
    let mut g2 = generation(&shared, prompt, 16);
    let (again, _) = run_alone(&mut m, &mut g2);
    assert_eq!(again, cold);
    assert_eq!(g2.cached_tokens, g2.prompt_tokens() - 1);
    let text = shared.decode(&warm);
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn batch_members_joining_and_leaving_get_their_solo_tokens() {
    let dir = common::llm_dir();
    let (mut m, shared) = model(
        &dir,
        "max_generations = 4\nmax_batch = 4\nspeculation = \"off\"",
    );
    let cases = [
        ("Tell me a long story about a robot.", 24),
        ("What is 2 + 2?", 6),
        (
            "Write a haiku about the sea, then explain it in detail.",
            30,
        ),
        ("Name three colours.", 12),
    ];
    let solo: Vec<Vec<u32>> = cases
        .iter()
        .map(|(p, n)| run_alone(&mut m, &mut generation(&shared, p, *n)).0)
        .collect();
    let slots = DecodeSlots::new(4);
    let mut batch = None;
    let mut done: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, (p, n)) in cases.iter().enumerate() {
        let mut g = generation(&shared, p, *n);
        g.route = i;
        while !g.is_decoding() && g.finished.is_none() {
            m.step(&mut g, usize::MAX).unwrap();
        }
        match slots.join(g) {
            Ok(Some(b)) => batch = Some(b),
            Ok(None) => {}
            Err(_) => panic!("batch full"),
        }
        // Members step a few times before the next one joins.
        let b = batch.as_mut().unwrap();
        for _ in 0..3 {
            slots.take_joiners(b);
            b.step(&mut m, |_| usize::MAX).unwrap();
            for g in b.remove(|g| g.finished.is_some()) {
                done.push((g.route, g.tokens.clone()));
            }
        }
    }
    let b = batch.as_mut().unwrap();
    while !b.members.is_empty() {
        b.step(&mut m, |_| usize::MAX).unwrap();
        for g in b.remove(|g| g.finished.is_some()) {
            done.push((g.route, g.tokens.clone()));
        }
    }
    assert_eq!(done.len(), cases.len());
    for (i, tokens) in done {
        assert_eq!(tokens, solo[i], "case {i}: batched tokens differ from solo");
    }
}
