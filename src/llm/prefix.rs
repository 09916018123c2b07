//! Prefix cache: the KV of prompt prefixes a worker has already computed,
//! reused by later prompts that start with the same tokens — above all the
//! system turn and chat template every request of a pipeline shares, and
//! the earlier turns of a conversation. The key at position i depends only
//! on tokens 0..=i, so any common token prefix is reusable whatever its
//! text boundary. A generation's first turn copies the longest cached
//! prefix into its own cache and prefills only the rest; after its last
//! prefill chunk its prompt is stored. Each worker keeps its own cache (no
//! lock between workers; a generation prefills on one worker at a time),
//! bounded in tokens and evicted least recently used. The template prefix
//! is computed once when the worker's session is warmed up, so even the
//! first request finds it warm.

use super::kv::KvCache;

/// Cached prefixes shorter than this are not worth a lookup and a copy.
pub const MIN_REUSE: usize = 4;

struct Entry {
    ids: Vec<u32>,
    kv: KvCache,
    used: u64,
}

/// One worker's cached prompt prefixes.
pub struct PrefixCache {
    budget: usize,
    entries: Vec<Entry>,
    clock: u64,
    pub hits: u64,
    pub lookups: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache of at most `budget` tokens (0 disables it).
    pub fn new(budget: usize) -> PrefixCache {
        PrefixCache {
            budget,
            entries: Vec::new(),
            clock: 0,
            hits: 0,
            lookups: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.ids.len()).sum()
    }

    /// The longest cached prefix of `prompt`, leaving its last token to be
    /// run (its logits give the first generated token): the cache holding
    /// it and how many positions to copy.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(&KvCache, usize)> {
        if !self.enabled() || prompt.len() <= MIN_REUSE {
            return None;
        }
        self.lookups += 1;
        let limit = prompt.len() - 1;
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.ids, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if n < MIN_REUSE {
            return None;
        }
        self.hits += 1;
        self.clock += 1;
        let e = &mut self.entries[best];
        e.used = self.clock;
        Some((&e.kv, n))
    }

    /// Stores the first `ids.len()` positions of `kv`'s row `row` (a
    /// prompt just prefilled), unless a cached entry already covers them;
    /// entries it extends are replaced; least recently used entries go
    /// when over budget.
    pub fn insert(&mut self, ids: &[u32], kv: &KvCache, row: usize) -> Result<(), String> {
        let ids = &ids[..ids.len().min(self.budget)];
        if ids.len() < MIN_REUSE || self.entries.iter().any(|e| e.ids.starts_with(ids)) {
            return Ok(());
        }
        self.entries.retain(|e| !ids.starts_with(&e.ids));
        while !self.entries.is_empty() && self.tokens() + ids.len() > self.budget {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .expect("not empty");
            self.entries.swap_remove(oldest);
        }
        let mut copy = KvCache::new(kv.shape, 1, ids.len())?;
        copy.copy_row_from(0, kv, row, ids.len())?;
        self.clock += 1;
        self.entries.push(Entry {
            ids: ids.to_vec(),
            kv: copy,
            used: self.clock,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::kv::KvShape;

    fn kv(len: usize) -> KvCache {
        let shape = KvShape {
            layers: 1,
            heads: 1,
            head_dim: 8,
        };
        KvCache::new(shape, 1, len).unwrap()
    }

    #[test]
    fn longest_common_prefix_wins_and_the_budget_evicts_lru() {
        let mut c = PrefixCache::new(20);
        let sys: Vec<u32> = (1..=8).collect();
        let a: Vec<u32> = sys.iter().copied().chain([100, 101]).collect();
        c.insert(&sys, &kv(8), 0).unwrap();
        c.insert(&a, &kv(10), 0).unwrap();
        assert_eq!(c.tokens(), 10, "the longer prompt replaced its prefix");
        let q: Vec<u32> = sys.iter().copied().chain([100, 7, 7]).collect();
        assert_eq!(c.lookup(&q).map(|(_, n)| n), Some(9));
        // The whole prompt is cached: its last token still runs.
        assert_eq!(c.lookup(&a).map(|(_, n)| n), Some(9));
        assert!(c.lookup(&[1, 2, 9, 9, 9, 9]).is_none(), "too short a match");
        let b: Vec<u32> = (50..62).collect();
        c.insert(&b, &kv(12), 0).unwrap();
        assert_eq!(c.tokens(), 12, "over budget: the older entry went");
        assert!(PrefixCache::new(0).lookup(&a).is_none());
    }
}
