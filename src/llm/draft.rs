//! Draft-model speculation: a smaller decoder of the same tokenizer
//! proposes k tokens greedily (k cheap runs of its own, on its own in-place
//! KV cache per generation), and the pipeline's model verifies them in one
//! pass (`llm::decode`). The draft reads everything the target reads: the
//! prompt alongside each prefill chunk, and before proposing, the tokens the
//! last verify produced that it has not seen. Pairing rules, checked at
//! load so a mismatched pair is refused instead of silently accepting
//! nothing: the same vocabulary (every token string ↔ id identical), the
//! same vocabulary size and stop tokens, and the converter's interface
//! (`input_ids`, `attention_mask`, `position_ids`, per-layer KV). The draft
//! may have any number of layers, heads or width.

use std::path::Path;
use std::sync::Arc;

use ort::session::Session;

use super::forward::{Forward, Pass};
use super::kv::{KvCache, KvShape};
use super::sampling::argmax;
use super::{LlmShared, ModelFiles};
use crate::config::{GeneratorConfig, RuntimeConfig};
use crate::infer::engine::EngineError;

/// A worker's draft model.
pub struct Draft {
    fwd: Forward,
    session: Session,
    pub shape: KvShape,
    context: usize,
}

/// Why `draft` cannot draft for `target`, if it cannot.
pub fn pairing_error(target: &LlmShared, draft: &LlmShared) -> Option<String> {
    let (t, d) = (&target.generation, &draft.generation);
    if t.vocab_size != d.vocab_size {
        return Some(format!(
            "vocabulary sizes differ ({} vs the pipeline's {})",
            d.vocab_size, t.vocab_size
        ));
    }
    if t.stop_token_ids != d.stop_token_ids {
        return Some(format!(
            "stop tokens differ ({:?} vs the pipeline's {:?})",
            d.stop_token_ids, t.stop_token_ids
        ));
    }
    let (tv, dv) = (
        target.tokenizer.get_vocab(true),
        draft.tokenizer.get_vocab(true),
    );
    if tv != dv {
        let differ = tv.iter().filter(|(s, id)| dv.get(*s) != Some(id)).count();
        return Some(format!(
            "tokenizers differ ({differ} of {} token strings map to other ids)",
            tv.len()
        ));
    }
    None
}

impl Draft {
    /// Loads the draft model in `dir` for pipeline `cfg` and checks it
    /// pairs with the pipeline's model.
    pub fn load(
        env: &ort::environment::Environment,
        cfg: &GeneratorConfig,
        rt: &RuntimeConfig,
        target: &Arc<LlmShared>,
        dir: &Path,
    ) -> Result<Draft, EngineError> {
        let err = |reason: String| EngineError::Interface {
            pipeline: cfg.name.clone(),
            reason: format!("draft model {}: {reason}", dir.display()),
        };
        let files = ModelFiles::open(dir).map_err(err)?;
        let shared = LlmShared::new(&files).map_err(err)?;
        if let Some(reason) = pairing_error(target, &shared) {
            return Err(err(format!(
                "cannot draft for this pipeline's model: {reason}"
            )));
        }
        let (session, _, _) = super::model::session(env, cfg, rt, &files.onnx)?;
        let g = &shared.generation;
        let keep = g.onnx.optional_inputs.contains_key("num_logits_to_keep");
        let fwd = Forward::new(&session, g.num_layers, g.vocab_size, keep).map_err(err)?;
        Ok(Draft {
            fwd,
            session,
            shape: KvShape {
                layers: g.num_layers,
                heads: g.num_key_value_heads,
                head_dim: g.head_dim,
            },
            context: g.context_length,
        })
    }

    /// Runs `seq[*len..]` (at most `limit` tokens of it) into the draft's
    /// cache; `*len` is how much of `seq` the cache holds. True when the
    /// cache then holds all of `seq`.
    pub fn feed(
        &mut self,
        kv: &KvCache,
        len: &mut usize,
        seq: &[u32],
        limit: usize,
    ) -> Result<bool, String> {
        if *len >= seq.len() {
            return Ok(true);
        }
        let end = seq.len().min(len.saturating_add(limit));
        let p = Pass {
            tokens: &seq[*len..end],
            past: &[*len],
            keep: 1,
        };
        self.fwd.run(&mut self.session, kv, &p)?;
        *len = end;
        Ok(end == seq.len())
    }

    /// Proposes up to `k` tokens to follow `seq` into `out`. When the
    /// draft is more than `chunk` tokens behind it catches up one chunk
    /// and proposes nothing (one turn stays one bounded piece of work).
    pub fn propose(
        &mut self,
        kv: &KvCache,
        len: &mut usize,
        seq: &[u32],
        k: usize,
        chunk: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        out.clear();
        if seq.len() + k > kv.cap.min(self.context) {
            return Ok(());
        }
        if seq.is_empty() {
            return Ok(());
        }
        // The proposal starts from the logits of the last token, so at
        // least that one runs (rewriting its own cache position).
        *len = (*len).min(seq.len() - 1);
        if !self.feed(kv, len, seq, chunk.max(k + 1))? {
            return Ok(());
        }
        for i in 0..k {
            let t = argmax(self.fwd.logits(0, 0)) as u32;
            out.push(t);
            if i + 1 == k {
                break;
            }
            let p = Pass {
                tokens: &[t],
                past: &[*len],
                keep: 1,
            };
            self.fwd.run(&mut self.session, kv, &p)?;
            *len += 1;
        }
        Ok(())
    }
}
