//! Continuous batching of generations: the decode steps of every live
//! generation of one pipeline and priority level run as one model call.
//! A generation prefills alone (its own turns, as before); once it has its
//! first token it joins the level's [`DecodeBatch`] through [`DecodeSlots`]
//! and is merged into the batch's KV cache at the batch's next step. The
//! batch is one scheduler ticket: one step per turn for all members, so a
//! higher level still waits at most one step. Finished, cancelled and late
//! members leave after any step without stalling the others.
//!
//! KV layout: one in-place cache `[max_batch, kv_heads, cap, head_dim]` per
//! layer; member i owns row i (its valid length is its `past_len`), and a
//! step binds the first `members` rows. GroupQueryAttention reads each
//! row's length from the attention mask's row sum and writes the new
//! key/value right after it, so rows of different lengths decode exactly
//! as they would alone, and no step copies the cache. Rows are copied only
//! when membership changes: a joiner's own cache is copied into the next
//! free row once, and a leaving member's row is filled by moving the last
//! row into it. A lone member decodes on row 0 like a generation on its
//! own, speculation included.

use super::decode::take_token;
use super::forward::Pass;
use super::kv::KvCache;
use super::spec::SpecMode;
use super::{Generation, LlmModel, StepOutput};
use crate::sched::JoinQueue;

/// Joining and membership of the decode batch of one (pipeline, level):
/// the protocol is [`JoinQueue`]'s (model-checked in `sched::loom`).
pub struct DecodeSlots {
    pub max_batch: usize,
    joins: JoinQueue<Box<Generation>>,
}

impl DecodeSlots {
    pub fn new(max_batch: usize) -> DecodeSlots {
        DecodeSlots {
            max_batch,
            joins: JoinQueue::new(max_batch),
        }
    }

    /// Hands a decoding generation to the batch. `Ok(Some(batch))`: no
    /// batch existed, the caller queues this new one. `Ok(None)`: the
    /// running batch takes it at its next step. `Err(g)`: the batch is
    /// full; `g` keeps stepping alone (it tries again after each step).
    pub fn join(&self, g: Box<Generation>) -> Result<Option<Box<DecodeBatch>>, Box<Generation>> {
        let (pipeline, level) = (g.pipeline, g.level);
        if !self.joins.join(g)? {
            return Ok(None);
        }
        let mut b = Box::new(DecodeBatch::new(pipeline, level, self.max_batch));
        self.take_joiners(&mut b);
        if b.members.is_empty() && !self.retire(&mut b) {
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// Adds waiting joiners to the batch (merged at its next step).
    pub fn take_joiners(&self, b: &mut DecodeBatch) {
        self.joins.take(|g| b.add(g));
    }

    /// A member left the batch for good.
    pub fn left(&self, n: usize) {
        self.joins.left(n);
    }

    /// The batch has no members: retire it, unless joiners arrived in the
    /// meantime and no other batch was started for them, in which case
    /// they are merged and `true` says to keep the batch going.
    pub fn retire(&self, b: &mut DecodeBatch) -> bool {
        self.joins.retire(|g| b.add(g))
    }

    /// Everything still waiting to join (teardown).
    pub fn drain(&self) -> Vec<Box<Generation>> {
        self.joins.drain()
    }
}

/// The generations of one (pipeline, level) that decode together.
pub struct DecodeBatch {
    pub pipeline: usize,
    pub level: usize,
    /// Members `0..merged` own rows `0..merged` of `kv`; later ones just
    /// joined and still hold their own caches.
    pub members: Vec<Box<Generation>>,
    merged: usize,
    max_batch: usize,
    kv: Option<KvCache>,
    /// Per-step inputs, reused.
    ids: Vec<u32>,
    past: Vec<usize>,
}

impl DecodeBatch {
    fn new(pipeline: usize, level: usize, max_batch: usize) -> DecodeBatch {
        DecodeBatch {
            pipeline,
            level,
            members: Vec::new(),
            merged: 0,
            max_batch: max_batch.max(1),
            kv: None,
            ids: Vec::with_capacity(max_batch),
            past: Vec::with_capacity(max_batch),
        }
    }

    /// A joiner becomes a member; its KV cache is copied into a row at
    /// the next step.
    fn add(&mut self, g: Box<Generation>) {
        self.members.push(g);
    }

    /// Takes out the members for which `leave` holds; the last merged row
    /// moves into each freed one.
    pub fn remove(&mut self, mut leave: impl FnMut(&Generation) -> bool) -> Vec<Box<Generation>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.members.len() {
            if !leave(&self.members[i]) {
                i += 1;
                continue;
            }
            if i < self.merged {
                let last = self.merged - 1;
                if i != last
                    && let Some(kv) = &mut self.kv
                    && let Err(e) = kv.move_row(i, last, self.members[last].past_len)
                {
                    // Unreachable by construction (rows and lengths fit).
                    tracing::error!(error = %e, "decode batch row move failed");
                }
                self.members.swap(i, last);
                self.merged -= 1;
                out.push(self.members.remove(last));
            } else {
                out.push(self.members.remove(i));
            }
        }
        out
    }

    /// Copies each joiner's own cache into the next free row, growing the
    /// batch cache (a new one, rows copied once) when a joiner needs more
    /// positions than it has.
    fn merge(&mut self) -> Result<(), String> {
        if self.merged == self.members.len() {
            return Ok(());
        }
        let need = self.members.iter().map(|g| g.cap).max().unwrap_or(0);
        let shape = self.members[self.merged]
            .kv
            .as_ref()
            .ok_or("a joiner without a KV cache")?
            .shape;
        if self.kv.as_ref().is_none_or(|kv| kv.cap < need) {
            let mut grown = KvCache::new(shape, self.max_batch, need)?;
            if let Some(old) = &self.kv {
                for (r, g) in self.members[..self.merged].iter().enumerate() {
                    grown.copy_row_from(r, old, r, g.past_len)?;
                }
            }
            self.kv = Some(grown);
        }
        let kv = self.kv.as_mut().expect("allocated above");
        while self.merged < self.members.len() {
            let g = &mut self.members[self.merged];
            let own = g.kv.take().ok_or("a joiner without a KV cache")?;
            kv.copy_row_from(self.merged, &own, 0, g.past_len)?;
            self.merged += 1;
        }
        Ok(())
    }

    /// One decode step for every member: one model run, one token each (a
    /// lone member may verify several drafted tokens instead). `room(g)`
    /// is how many tokens `g`'s outbox can take this step.
    pub fn step(
        &mut self,
        model: &mut LlmModel,
        room: impl Fn(&Generation) -> usize,
    ) -> Result<Vec<StepOutput>, String> {
        self.merge()?;
        let kv = self.kv.as_ref().ok_or("decode batch without a cache")?;
        let b = self.members.len();
        let mut outs: Vec<StepOutput> = (0..b).map(|_| StepOutput::default()).collect();
        if b == 1 {
            let g = &mut self.members[0];
            let max_out = room(g);
            model.decode(g, kv, max_out, &mut outs[0])?;
            return Ok(outs);
        }
        self.ids.clear();
        self.past.clear();
        for g in &self.members {
            self.ids
                .push(g.next_input.ok_or("batched member has no next token")?);
            self.past.push(g.past_len);
        }
        let p = Pass {
            tokens: &self.ids,
            past: &self.past,
            keep: 1,
        };
        // On failure the members end (the worker ends every member).
        model.fwd.run(&mut model.session, kv, &p)?;
        let spec_on = model.spec_cfg.mode != SpecMode::Off;
        for (bi, (g, out)) in self.members.iter_mut().zip(&mut outs).enumerate() {
            g.past_len += 1;
            let t = take_token(
                &model.shared,
                g,
                model.fwd.logits(bi, 0),
                &mut model.scratch,
                out,
            );
            if spec_on {
                g.spec.plain_token(t);
            }
        }
        Ok(outs)
    }
}
