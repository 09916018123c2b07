//! Continuous batching of generations: the decode steps of every live
//! generation of one pipeline and priority level run as one model call.
//! A generation prefills alone (its own turns, as before); once it has its
//! first token it joins the level's [`DecodeBatch`] through [`DecodeSlots`]
//! and is merged into the batch's KV cache at the batch's next step. The
//! batch is one scheduler ticket: one step per turn for all members, so a
//! higher level still waits at most one step. Finished, cancelled and late
//! members leave after any step without stalling the others.
//!
//! KV layout: the merged cache is `[B, kv_heads, width, head_dim]` per layer,
//! each row left-aligned (its valid length is the generation's `past_len`)
//! and zero-padded on the right. The decoder's GroupQueryAttention reads the
//! per-row valid length from the attention mask's row sum and writes each
//! new key/value right after it, so rows of different lengths decode exactly
//! as they would alone. The merged cache is rebuilt (copied) only when
//! membership changes; between changes each step's `present.*` outputs are
//! moved into the next step's inputs.

use ort::value::{DynValue, Tensor as OrtTensor};

use super::model::{i64_tensor, take_token};
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
        let mut b = Box::new(DecodeBatch::new(pipeline, level));
        self.take_joiners(&mut b);
        if b.members.is_empty() && !self.retire(&mut b) {
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// Merges waiting joiners into the batch (at the start of a step).
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
    pub members: Vec<Box<Generation>>,
    /// Per member: its row in `past`, or `None` if its KV cache is still
    /// its own (just joined).
    rows: Vec<Option<usize>>,
    /// Merged `past_key_values.*` in model input order (k, v per layer).
    past: Vec<DynValue>,
    width: usize,
    /// Membership changed since `past` was built.
    dirty: bool,
}

impl DecodeBatch {
    fn new(pipeline: usize, level: usize) -> DecodeBatch {
        DecodeBatch {
            pipeline,
            level,
            members: Vec::new(),
            rows: Vec::new(),
            past: Vec::new(),
            width: 0,
            dirty: false,
        }
    }

    /// A joiner becomes a member; its KV cache is merged at the next step.
    fn add(&mut self, g: Box<Generation>) {
        self.rows.push(None);
        self.members.push(g);
        self.dirty = true;
    }

    /// Takes out the members for which `leave` holds.
    pub fn remove(&mut self, mut leave: impl FnMut(&Generation) -> bool) -> Vec<Box<Generation>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.members.len() {
            if leave(&self.members[i]) {
                out.push(self.members.remove(i));
                self.rows.remove(i);
                self.dirty = true;
            } else {
                i += 1;
            }
        }
        out
    }

    /// Copies every member's valid KV rows into a fresh merged cache.
    fn rebuild(&mut self, kv_heads: usize, head_dim: usize) -> Result<(), String> {
        let b = self.members.len();
        let width = self.members.iter().map(|g| g.past_len).max().unwrap_or(0);
        let old = std::mem::take(&mut self.past);
        let tensors = self
            .members
            .iter()
            .find(|g| !g.past.is_empty())
            .map(|g| g.past.len())
            .unwrap_or(old.len());
        let mut merged = Vec::with_capacity(tensors);
        for t in 0..tensors {
            let mut buf = vec![0f32; b * kv_heads * width * head_dim];
            let old_data = match old.get(t) {
                Some(v) => Some(v.try_extract_tensor::<f32>().map_err(|e| e.to_string())?.1),
                None => None,
            };
            for (bi, (g, row)) in self.members.iter().zip(&self.rows).enumerate() {
                let (src, src_row, src_width) = match row {
                    Some(r) => (old_data.ok_or("merged cache missing")?, *r, self.width),
                    None => {
                        let v = g.past.get(t).ok_or("joiner without a KV cache")?;
                        let data = v.try_extract_tensor::<f32>().map_err(|e| e.to_string())?.1;
                        (data, 0, g.past_len)
                    }
                };
                let n = g.past_len * head_dim;
                for h in 0..kv_heads {
                    let s = (src_row * kv_heads + h) * src_width * head_dim;
                    let d = (bi * kv_heads + h) * width * head_dim;
                    buf[d..d + n].copy_from_slice(&src[s..s + n]);
                }
            }
            let shape = [b, kv_heads, width, head_dim];
            merged.push(
                OrtTensor::from_array((shape, buf))
                    .map_err(|e| e.to_string())?
                    .into_dyn(),
            );
        }
        for g in &mut self.members {
            g.past.clear();
        }
        self.rows = (0..b).map(Some).collect();
        self.past = merged;
        self.width = width;
        self.dirty = false;
        Ok(())
    }

    /// One decode step for every member: one model run, one token each.
    pub fn step(&mut self, model: &mut LlmModel) -> Result<Vec<StepOutput>, String> {
        let sh = model.shared.clone();
        let gen_cfg = &sh.generation;
        if self.dirty {
            self.rebuild(gen_cfg.num_key_value_heads, gen_cfg.head_dim)?;
        }
        let b = self.members.len();
        let w = self.width;
        let mut ids = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b);
        let mut mask = vec![0i64; b * (w + 1)];
        for (bi, g) in self.members.iter().enumerate() {
            ids.push(g.next_input.ok_or("batched member has no next token")? as i64);
            pos.push(g.past_len as i64);
            mask[bi * (w + 1)..bi * (w + 1) + g.past_len + 1].fill(1);
        }
        // On failure the merged cache is gone: the worker ends every member.
        let out = model.run_kv(
            [
                i64_tensor([b, 1], ids)?,
                i64_tensor([b, w + 1], mask)?,
                i64_tensor([b, 1], pos)?,
            ],
            &mut self.past,
        )?;
        self.width = w + 1;
        let logits = out.get("logits").ok_or("model returned no logits")?;
        let (shape, data) = logits
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        let vocab = *shape.last().ok_or("logits have no shape")? as usize;
        if data.len() != b * vocab {
            return Err(format!(
                "logits have {} values for a batch of {b}",
                data.len()
            ));
        }
        let mut outs = Vec::with_capacity(b);
        for (bi, g) in self.members.iter_mut().enumerate() {
            g.past_len += 1;
            let mut row = data[bi * vocab..(bi + 1) * vocab].to_vec();
            outs.push(take_token(&sh, g, &mut row));
        }
        Ok(outs)
    }
}
