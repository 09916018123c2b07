//! One forward pass of a decoder over the in-place KV cache: the inputs of a
//! prefill chunk, a decode step, a batched decode step or a speculative
//! verify pass are written into buffers allocated once per worker
//! (`input_ids`, `attention_mask`, `position_ids`, `num_logits_to_keep`),
//! bound with the cache ([`KvCache::bind`], rebound only when a different
//! cache or batch size comes along) and run; the logits land in a buffer
//! the loop owns, only for the positions asked for when the model declares
//! `num_logits_to_keep` (generation.json `onnx.optional_inputs`).

use std::ffi::CString;

use ort::session::Session;

use super::bind::{Binding, Buf};
use super::kv::{KvCache, KvNames};

/// What one pass computes: `tokens.len() / past.len()` new tokens for each
/// of `past.len()` sequences (row-major), each after its `past` positions.
pub struct Pass<'a> {
    pub tokens: &'a [u32],
    pub past: &'a [usize],
    /// Positions per row whose logits are wanted (the last ones).
    pub keep: usize,
}

struct Names {
    ids: CString,
    mask: CString,
    pos: CString,
    keep: CString,
    logits: CString,
    kv: KvNames,
}

/// A worker's forward-pass machinery for one session.
pub struct Forward {
    binding: Binding,
    names: Names,
    /// Whether the model takes `num_logits_to_keep`.
    has_keep: bool,
    vocab: usize,
    ids: Buf<i64>,
    mask: Buf<i64>,
    pos: Buf<i64>,
    keep: Buf<i64>,
    logits: Buf<f32>,
    /// The cache (identity, rows) the KV names point at.
    bound_kv: Option<(u64, usize)>,
    /// Logit positions per row of the latest pass.
    per_row: usize,
    want: usize,
}

/// Grows `b` to at least `n` elements (a new, larger buffer: only when a
/// pass is larger than any before it, never in the steady state).
fn ensure<T: super::bind::Elem>(b: &mut Buf<T>, n: usize) -> Result<(), String> {
    if b.len() < n {
        *b = Buf::zeroed(n.next_power_of_two())?;
    }
    Ok(())
}

impl Forward {
    pub fn new(
        session: &Session,
        layers: usize,
        vocab: usize,
        has_keep: bool,
    ) -> Result<Forward, String> {
        let c = |s: &str| CString::new(s).expect("static name");
        Ok(Forward {
            binding: Binding::new(session)?,
            names: Names {
                ids: c("input_ids"),
                mask: c("attention_mask"),
                pos: c("position_ids"),
                keep: c("num_logits_to_keep"),
                logits: c("logits"),
                kv: KvNames::new(layers),
            },
            has_keep,
            vocab,
            ids: Buf::zeroed(256)?,
            mask: Buf::zeroed(4096)?,
            pos: Buf::zeroed(256)?,
            keep: Buf::zeroed(1)?,
            logits: Buf::zeroed(vocab * 8)?,
            bound_kv: None,
            per_row: 0,
            want: 0,
        })
    }

    pub fn has_keep(&self) -> bool {
        self.has_keep
    }

    /// Writes the pass's ids, mask (each row's past + new positions set,
    /// right-padded to the widest row) and positions.
    fn fill(&mut self, p: &Pass, rows: usize, seq: usize) -> Result<usize, String> {
        let width = p.past.iter().max().copied().unwrap_or(0) + seq;
        ensure(&mut self.ids, rows * seq)?;
        ensure(&mut self.pos, rows * seq)?;
        ensure(&mut self.mask, rows * width)?;
        for (d, &t) in self.ids.as_mut_slice().iter_mut().zip(p.tokens) {
            *d = i64::from(t);
        }
        let (pos, mask) = (self.pos.as_mut_slice(), self.mask.as_mut_slice());
        for (r, &past) in p.past.iter().enumerate() {
            for j in 0..seq {
                pos[r * seq + j] = (past + j) as i64;
            }
            let row = &mut mask[r * width..(r + 1) * width];
            row[..past + seq].fill(1);
            row[past + seq..].fill(0);
        }
        Ok(width)
    }

    /// Runs one pass over the first `p.past.len()` rows of `kv`. On return
    /// [`Forward::logits`] holds `p.keep` positions per row.
    pub fn run(&mut self, session: &mut Session, kv: &KvCache, p: &Pass) -> Result<(), String> {
        let rows = p.past.len();
        if rows == 0 || p.tokens.is_empty() || !p.tokens.len().is_multiple_of(rows) {
            return Err(format!("{} tokens for {rows} rows", p.tokens.len()));
        }
        let seq = p.tokens.len() / rows;
        if let Some(&past) = p.past.iter().find(|&&past| past + seq > kv.cap) {
            return Err(format!(
                "KV cache of {} positions cannot take {seq} more after {past}",
                kv.cap
            ));
        }
        let width = self.fill(p, rows, seq)?;
        let want = p.keep.clamp(1, seq);
        let per_row = if self.has_keep { want } else { seq };
        self.keep.as_mut_slice()[0] = want as i64;
        ensure(&mut self.logits, rows * per_row * self.vocab)?;
        let (r, s, w) = (rows as i64, seq as i64, width as i64);
        // SAFETY: every buffer bound here is owned by `self` or is `kv`,
        // which the caller keeps alive and unmoved across the run; the KV
        // binding is refreshed whenever a different cache or row count
        // comes along, and the small buffers are rebound on every pass (a
        // grown buffer is a new allocation).
        unsafe {
            let b = &mut self.binding;
            b.input(&self.names.ids, &self.ids, 0, &[r, s])?;
            b.input(&self.names.mask, &self.mask, 0, &[r, w])?;
            b.input(&self.names.pos, &self.pos, 0, &[r, s])?;
            if self.has_keep {
                b.input(&self.names.keep, &self.keep, 0, &[1])?;
            }
            let v = self.vocab as i64;
            b.output(&self.names.logits, &self.logits, 0, &[r, per_row as i64, v])?;
            if self.bound_kv != Some((kv.id(), rows)) {
                self.bound_kv = None;
                kv.bind(b, &self.names.kv, rows)?;
                self.bound_kv = Some((kv.id(), rows));
            }
        }
        self.per_row = per_row;
        self.want = want;
        self.binding.run(session)
    }

    /// Logits of row `r`, position `j` of the `keep` last ones of the
    /// latest pass (mutable: the sampler penalises in place).
    pub fn logits(&mut self, r: usize, j: usize) -> &mut [f32] {
        let v = self.vocab;
        let at = (r * self.per_row + (self.per_row - self.want) + j) * v;
        &mut self.logits.as_mut_slice()[at..at + v]
    }
}
