//! The state of one generation request as it moves between the scheduler and
//! workers: prompt and generated ids, its in-place KV cache (allocated at its
//! first step for prompt + `max_tokens` positions), the sampler's generator,
//! the incremental detokenizer, speculation counters, the CPU time and
//! energy its steps consumed, and the timestamps its TTFT/TPOT come from.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::Finish;
use super::detok::Detokenizer;
use super::kv::KvCache;
use super::sampling::Rng;
use super::spec::SpecState;
use super::tools::ToolRun;
use crate::error::Rejection;
use crate::obs::cost::Cost;
use crate::wire::command::Command;
use crate::wire::reply::Timing;

/// The state of one request, moved between the scheduler and workers.
pub struct Generation {
    pub pipeline: usize,
    pub level: usize,
    pub cmd: Command,
    pub cancel: Arc<AtomicBool>,
    pub received: Instant,
    pub deadline: Instant,
    /// The generation's slot in its pipeline's registry (where its
    /// messages go; the registry's user owns the delivery side).
    pub route: usize,
    pub(super) prompt_tokens: usize,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Prompt + generated ids, for the repetition penalty.
    pub(super) history: Vec<u32>,
    /// Its own KV cache, until it joins a decode batch (whose cache then
    /// holds its row).
    pub(super) kv: Option<KvCache>,
    /// Positions its cache holds (prompt + `max_tokens`, within the
    /// model's context).
    pub(super) cap: usize,
    pub(super) past_len: usize,
    /// Prompt positions taken from the prefix cache instead of prefilled.
    pub cached_tokens: usize,
    pub spec: SpecState,
    /// The draft model's cache and how many positions of `history` it holds
    /// (draft-model speculation).
    pub(super) draft_kv: Option<KvCache>,
    pub(super) draft_len: usize,
    /// CPU time (and energy, where measured) of the steps that served it.
    pub cost: Cost,
    pub(super) next_input: Option<u32>,
    /// Prompt ids and how many of them the KV cache already holds: the
    /// prefill runs in chunks so one turn never takes the whole prompt.
    pub(super) prompt: Vec<u32>,
    pub(super) prefilled: usize,
    pub(super) rng: Rng,
    pub(super) detok: Detokenizer,
    pub started: Option<Instant>,
    pub first_token: Option<Instant>,
    pub finished: Option<Finish>,
    pub error: Option<Rejection>,
    /// Daemon event order of the latest step (see `Shared::order`).
    pub run_order: u64,
    /// The grammar and gate of a step that enabled tools.
    pub tools: Option<Box<ToolRun>>,
    /// The daemon that generated this answer (or its start) when it was
    /// offloaded (`io::fleet`); named in the final message.
    pub remote: Option<String>,
}

/// What one step produced: the tokens sampled (several after a verify
/// pass) and the text each releases.
#[derive(Default)]
pub struct StepOutput {
    pub tokens: Vec<(u32, String)>,
}

impl Generation {
    pub fn new(
        pipeline: usize,
        level: usize,
        cmd: Command,
        cancel: Arc<AtomicBool>,
        received: Instant,
        route: usize,
        prompt: Vec<u32>,
    ) -> Generation {
        let seed = cmd.sampling.seed;
        let stops = cmd.stop.clone();
        Generation {
            pipeline,
            level,
            deadline: received + cmd.deadline,
            cmd,
            cancel,
            received,
            route,
            prompt_tokens: prompt.len(),
            tokens: Vec::new(),
            kv: None,
            cap: 0,
            past_len: 0,
            cached_tokens: 0,
            spec: SpecState::default(),
            draft_kv: None,
            draft_len: 0,
            cost: Cost::default(),
            next_input: None,
            history: prompt.clone(),
            prompt,
            prefilled: 0,
            rng: Rng::new(seed),
            detok: Detokenizer::new(stops),
            started: None,
            first_token: None,
            finished: None,
            error: None,
            run_order: 0,
            tools: None,
            remote: None,
        }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn text(&self) -> &str {
        self.detok.text()
    }

    /// Text held back by the detokenizer, released when generation ends.
    pub fn flush(&mut self) -> String {
        self.detok.finish()
    }

    /// Records a message another daemon streamed for this request (fleet
    /// offload): its token counts toward `max_tokens` and its text is part
    /// of the answer, as if generated here. A piece without a token (text
    /// the other daemon held back until its end) is released at this
    /// generation's own end.
    pub fn note_remote(&mut self, token_id: Option<u32>, text: &str, now: Instant) {
        match token_id {
            Some(t) => {
                self.tokens.push(t);
                self.detok.add_emitted(text);
            }
            None => self.detok.add_held(text),
        }
        self.first_token.get_or_insert(now);
    }

    /// Lets this daemon's model continue a generation another daemon
    /// started: `streamed` (the text streamed so far, tokenized by this
    /// model) follows the prompt, so the next token continues that text,
    /// and message seq numbers go on from the streamed ones. Call before
    /// the generation's first local step.
    pub fn continue_after(&mut self, streamed: Vec<u32>) {
        self.history.extend_from_slice(&streamed);
        self.prompt.extend(streamed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }

    /// Prefill done and not finished: its next step is a decode step, the
    /// kind that can join a decode batch.
    pub fn is_decoding(&self) -> bool {
        self.next_input.is_some() && self.finished.is_none()
    }

    /// Greedy requests can speculate: verification keeps exactly the
    /// tokens greedy decoding would choose. Not with tools: drafted tokens
    /// would skip the grammar's mask and the call gate.
    pub fn is_greedy(&self) -> bool {
        self.cmd.sampling.temperature <= 0.0 && self.tools.is_none()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn timing(g: &Generation, now: Instant) -> Timing {
    let queue = g
        .started
        .map(|s| s - g.received)
        .unwrap_or(now - g.received);
    let total = now - g.received;
    let ttft = g.first_token.map(|f| f - g.received);
    let n = g.tokens.len();
    let tpot = ttft
        .filter(|_| n > 1)
        .map(|t| ms(total - t) / (n - 1) as f64);
    let prefill = match (g.started, g.first_token) {
        (Some(s), Some(f)) if f > s => Some(g.prompt_tokens as f64 / (f - s).as_secs_f64()),
        _ => None,
    };
    Timing {
        queue_ms: ms(queue),
        ttft_ms: ttft.map(ms),
        tpot_ms: tpot,
        total_ms: ms(total),
        prefill_tokens_per_s: prefill,
        decode_tokens_per_s: tpot.filter(|t| *t > 0.0).map(|t| 1000.0 / t),
    }
}
