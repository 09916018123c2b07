//! The model runs that advance one generation, one per scheduler turn: a
//! prefill chunk (after copying any cached prefix into the generation's new
//! cache), then per turn either a plain decode step or — when speculation
//! is on, the request is greedy and a draft is worth it — one verify pass of
//! k drafted tokens that keeps the longest prefix greedy decoding agrees
//! with plus the model's own next token. All of them run in place on the
//! generation's KV cache and ask for the logits of the positions they use
//! only. [`take_token`] is the shared tail: sample, append, detokenize,
//! check the end conditions.

use std::time::Instant;

use super::forward::Pass;
use super::kv::KvCache;
use super::sampling::{self, Scratch};
use super::spec::{self, SpecMode};
use super::tools::{Committed, ToolError};
use super::{Finish, Generation, LlmModel, LlmShared, StepOutput};

/// Plain steps after which draft-model speculation that switched itself
/// off tries one short verify again (prompt lookup scores drafts in the
/// shadow instead, for free).
const DRAFT_REPROBE: u64 = 32;

impl LlmModel {
    /// One model run: the next prefill chunk, or one decode or verify step.
    /// `max_out` bounds the tokens this step may produce (the room left in
    /// the generation's outbox). Sets `g.finished` when it ends.
    pub fn step(&mut self, g: &mut Generation, max_out: usize) -> Result<StepOutput, String> {
        let mut out = StepOutput::default();
        if g.started.is_none() {
            self.start(g)?;
        }
        let kv =
            g.kv.take()
                .ok_or("the generation's KV cache is in a decode batch")?;
        let r = if g.next_input.is_none() {
            self.prefill(g, &kv, &mut out)
        } else {
            self.decode(g, &kv, max_out, &mut out)
        };
        g.kv = Some(kv);
        r.map(|()| out)
    }

    /// First turn: the cache for the whole generation, seeded from the
    /// prefix cache.
    fn start(&mut self, g: &mut Generation) -> Result<(), String> {
        g.started = Some(Instant::now());
        let ctx = self.shared.generation.context_length;
        g.cap = (g.prompt.len() + g.cmd.max_tokens as usize)
            .min(ctx)
            .max(g.prompt.len());
        let mut kv = KvCache::new(self.kv_shape, 1, g.cap)?;
        if let Some((src, n)) = self.prefix.lookup(&g.prompt) {
            kv.copy_row_from(0, src, 0, n)?;
            g.past_len = n;
            g.prefilled = n;
            g.cached_tokens = n;
        }
        g.kv = Some(kv);
        let k = self.spec_cfg.max_draft;
        g.spec.draft.reserve(k);
        g.spec.pass.reserve(k + 1);
        if let Some(d) = &self.draft
            && g.is_greedy()
        {
            g.draft_kv = Some(KvCache::new(d.shape, 1, g.cap)?);
        }
        Ok(())
    }

    fn prefill(
        &mut self,
        g: &mut Generation,
        kv: &KvCache,
        out: &mut StepOutput,
    ) -> Result<(), String> {
        let end = (g.prefilled + self.prefill_chunk).min(g.prompt.len());
        let p = Pass {
            tokens: &g.prompt[g.prefilled..end],
            past: &[g.past_len],
            keep: 1,
        };
        self.fwd.run(&mut self.session, kv, &p)?;
        g.past_len += end - g.prefilled;
        g.prefilled = end;
        if let (Some(d), Some(dkv)) = (&mut self.draft, &g.draft_kv) {
            // The draft reads the same prompt (all of it: it has no prefix
            // cache), a chunk per turn alongside.
            d.feed(dkv, &mut g.draft_len, &g.prompt[..end], usize::MAX)?;
        }
        if end < g.prompt.len() {
            return Ok(());
        }
        take_token(
            &self.shared,
            g,
            self.fwd.logits(0, 0),
            &mut self.scratch,
            out,
        );
        if let Err(e) = self.prefix.insert(&g.prompt, kv, 0) {
            tracing::warn!(error = %e, "prompt not stored in the prefix cache");
        }
        Ok(())
    }

    /// A decode turn on row 0 of `kv` (the generation's own cache, or a
    /// decode batch's when it is the only member).
    pub(super) fn decode(
        &mut self,
        g: &mut Generation,
        kv: &KvCache,
        max_out: usize,
        out: &mut StepOutput,
    ) -> Result<(), String> {
        let t = g.next_input.ok_or("decode step without a next token")?;
        let t0 = Instant::now();
        let k = self.plan(g, kv.cap, max_out)?;
        if k > 0 {
            return self.verify(g, kv, k, t0, out);
        }
        let p = Pass {
            tokens: &[t],
            past: &[g.past_len],
            keep: 1,
        };
        self.fwd.run(&mut self.session, kv, &p)?;
        let ns = t0.elapsed().as_nanos() as f64;
        self.costs.record_plain(ns);
        g.past_len += 1;
        let tok = take_token(
            &self.shared,
            g,
            self.fwd.logits(0, 0),
            &mut self.scratch,
            out,
        );
        if self.spec_cfg.mode != SpecMode::Off {
            g.spec.plain_token(tok);
            g.spec.est_plain_ns += ns;
            g.spec.actual_ns += ns;
        }
        Ok(())
    }

    /// How many drafts this turn verifies (0: a plain step), with the draft
    /// in `g.spec.draft`.
    fn plan(&mut self, g: &mut Generation, cap: usize, max_out: usize) -> Result<usize, String> {
        g.spec.draft.clear();
        if self.spec_cfg.mode == SpecMode::Off || !g.is_greedy() {
            return Ok(0);
        }
        let ctx = self.shared.generation.context_length;
        // Room for k drafts: k + 1 tokens out, k + 1 positions in the cache.
        let avail = self
            .spec_cfg
            .max_draft
            .min((g.cmd.max_tokens as usize).saturating_sub(g.tokens.len() + 1))
            .min(max_out.saturating_sub(1))
            .min(cap.saturating_sub(g.past_len + 1))
            .min(ctx.saturating_sub(g.past_len + 2));
        if avail == 0 {
            return Ok(0);
        }
        match self.spec_cfg.mode {
            SpecMode::PromptLookup => {
                spec::lookup(&g.history, &self.spec_cfg, avail, &mut g.spec.draft);
                let k = g.spec.choose(g.spec.draft.len(), &self.costs);
                if k == 0 {
                    g.spec.shadow_draft();
                }
                g.spec.draft.truncate(k);
                Ok(k)
            }
            SpecMode::Draft => self.plan_draft(g, avail),
            SpecMode::Off => Ok(0),
        }
    }

    fn plan_draft(&mut self, g: &mut Generation, avail: usize) -> Result<usize, String> {
        let (Some(d), Some(dkv)) = (&mut self.draft, &g.draft_kv) else {
            return Ok(0);
        };
        let mut k = g.spec.choose(avail, &self.costs);
        if k == 0 && g.spec.plain_steps % DRAFT_REPROBE == DRAFT_REPROBE - 1 {
            k = 1;
        }
        if k == 0 {
            return Ok(0);
        }
        d.propose(
            dkv,
            &mut g.draft_len,
            &g.history,
            k,
            self.prefill_chunk,
            &mut g.spec.draft,
        )?;
        Ok(g.spec.draft.len())
    }

    /// Runs the last token and `k` drafts in one pass and keeps what greedy
    /// decoding agrees with.
    fn verify(
        &mut self,
        g: &mut Generation,
        kv: &KvCache,
        k: usize,
        t0: Instant,
        out: &mut StepOutput,
    ) -> Result<(), String> {
        let t = g.next_input.ok_or("verify without a next token")?;
        g.spec.pass.clear();
        g.spec.pass.push(t);
        g.spec.pass.extend_from_slice(&g.spec.draft[..k]);
        let past0 = g.past_len;
        let seen = g.history.len();
        let p = Pass {
            tokens: &g.spec.pass,
            past: &[past0],
            keep: k + 1,
        };
        self.fwd.run(&mut self.session, kv, &p)?;
        let (mut accepted, mut produced) = (0, 0);
        for j in 0..=k {
            // The cache now holds input j (the last token, then drafts).
            g.past_len = past0 + j + 1;
            let tok = take_token(
                &self.shared,
                g,
                self.fwd.logits(0, j),
                &mut self.scratch,
                out,
            );
            produced += 1;
            if g.finished.is_some() || j == k || tok != g.spec.draft[j] {
                break;
            }
            accepted += 1;
        }
        // The draft model's cache holds drafts up to k - 1; only accepted
        // ones stay valid.
        g.draft_len = g.draft_len.min(seen + accepted);
        let ns = t0.elapsed().as_nanos() as f64;
        self.costs.record_verify(k, ns);
        g.spec.record_verify(k, accepted, produced);
        g.spec.est_plain_ns += self.costs.plain_ns() * produced as f64;
        g.spec.actual_ns += ns;
        Ok(())
    }
}

/// Samples the next token from `logits`, updates the generation (history,
/// detokenizer, end conditions) and appends what to stream to `out`.
/// Returns the token. Shared by every kind of step.
pub(super) fn take_token(
    sh: &LlmShared,
    g: &mut Generation,
    logits: &mut [f32],
    scratch: &mut Scratch,
    out: &mut StepOutput,
) -> u32 {
    let gen_cfg = &sh.generation;
    crate::fault::at(crate::fault::Stage::Sample, Some(&g.cmd.id));
    if let Err(e) = tools_mask(g, logits) {
        tool_failed(g, e);
        return 0;
    }
    let token = sampling::sample(logits, &g.history, &g.cmd.sampling, &mut g.rng, scratch);
    g.history.push(token);
    let call = match tools_commit(g, token) {
        Ok(c) => c,
        Err(e) => {
            tool_failed(g, e);
            return token;
        }
    };
    if gen_cfg.stop_token_ids.contains(&token) {
        g.finished = Some(Finish::Stop);
        return token;
    }
    g.tokens.push(token);
    g.next_input = Some(token);
    crate::fault::at(crate::fault::Stage::Detok, Some(&g.cmd.id));
    let piece = g.detok.push(token, |ids| sh.decode(ids));
    if call == Committed::Call {
        g.finished = Some(Finish::ToolCall);
    } else if piece.stopped {
        g.finished = Some(Finish::Stop);
    } else if g.tokens.len() >= g.cmd.max_tokens as usize
        || g.past_len + 1 >= gen_cfg.context_length
    {
        g.finished = Some(Finish::Length);
    }
    out.tokens.push((token, piece.text));
    token
}

/// The tool hook before sampling: with tools enabled, every token the
/// grammar does not allow next gets -inf (computed in place, no waiting).
fn tools_mask(g: &mut Generation, logits: &mut [f32]) -> Result<(), ToolError> {
    match g.tools.as_deref_mut() {
        Some(run) => run.mask(logits),
        None => Ok(()),
    }
}

/// The tool hook after sampling: advances the grammar; a closed call is
/// gated here and waits in the run for egress.
fn tools_commit(g: &mut Generation, token: u32) -> Result<Committed, ToolError> {
    match g.tools.as_deref_mut() {
        Some(run) => run.commit(&g.cmd.id, token, Instant::now()),
        None => Ok(Committed::Continue),
    }
}

fn tool_failed(g: &mut Generation, e: ToolError) {
    g.error = Some(e.rejection());
    g.finished = Some(Finish::Error);
}
