//! Speculative decoding: fewer model calls per token. A decode turn may
//! propose up to k draft tokens — by prompt lookup (the tokens that followed
//! the latest earlier occurrence of the sequence's last n-gram, in the
//! prompt or the text so far) or by a small draft model of the same
//! tokenizer (`llm::draft`) — and verify them in one forward pass of k+1
//! positions; the longest prefix the model itself would have chosen is
//! kept, plus the model's own next token, so the output is exactly greedy
//! decoding's. Whether a turn speculates, and with how many drafts, is a
//! per-request decision from two measurements: the request's recent
//! acceptance and this worker's cost of a verify pass relative to a plain
//! step. When the expected tokens per verify do not pay for its cost the
//! request decodes plainly and keeps scoring its drafts in the shadow
//! (free: they are compared with the tokens plain decoding produces), so
//! speculation switches itself back on when acceptance recovers and no
//! request is made slower by it.

/// Where drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecMode {
    Off,
    PromptLookup,
    Draft,
}

impl SpecMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecMode::Off => "off",
            SpecMode::PromptLookup => "prompt_lookup",
            SpecMode::Draft => "draft",
        }
    }
}

/// A pipeline's speculation settings.
#[derive(Clone, Debug)]
pub struct SpecConfig {
    pub mode: SpecMode,
    /// Most draft tokens verified in one pass.
    pub max_draft: usize,
    /// Longest and shortest n-gram prompt lookup matches.
    pub ngram_max: usize,
    pub ngram_min: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            mode: SpecMode::Off,
            max_draft: 4,
            ngram_max: 3,
            ngram_min: 1,
        }
    }
}

/// Prompt lookup: fills `out` with up to `max` tokens that followed the
/// most recent earlier occurrence of the last n tokens of `seq` (longest n
/// first). Linear in the sequence length; false when nothing matched.
pub fn lookup(seq: &[u32], cfg: &SpecConfig, max: usize, out: &mut Vec<u32>) -> bool {
    out.clear();
    if max == 0 {
        return false;
    }
    for n in (cfg.ngram_min.max(1)..=cfg.ngram_max).rev() {
        if seq.len() <= n {
            continue;
        }
        let pat = &seq[seq.len() - n..];
        // Latest match first: recent context predicts best.
        for start in (0..seq.len() - n).rev() {
            if &seq[start..start + n] == pat {
                let from = start + n;
                let to = (from + max).min(seq.len());
                out.extend_from_slice(&seq[from..to]);
                return true;
            }
        }
    }
    false
}

/// This worker's measured cost of a verify pass of k drafts relative to a
/// plain decode step (exponentially weighted wall times).
pub struct StepCosts {
    plain_ns: f64,
    /// Index k: a turn verifying k drafts (drafting included); 0 = unknown.
    verify_ns: Vec<f64>,
}

/// Weight of the newest measurement.
const EWMA: f64 = 0.1;

fn ewma(old: f64, new: f64) -> f64 {
    if old <= 0.0 {
        new
    } else {
        old + EWMA * (new - old)
    }
}

impl StepCosts {
    pub fn new(max_draft: usize) -> StepCosts {
        StepCosts {
            plain_ns: 0.0,
            verify_ns: vec![0.0; max_draft + 1],
        }
    }

    pub fn record_plain(&mut self, ns: f64) {
        self.plain_ns = ewma(self.plain_ns, ns);
    }

    pub fn record_verify(&mut self, k: usize, ns: f64) {
        if let Some(v) = self.verify_ns.get_mut(k) {
            *v = ewma(*v, ns);
        }
    }

    pub fn plain_ns(&self) -> f64 {
        self.plain_ns
    }

    /// Cost of verifying `k` drafts in plain steps: measured, else
    /// interpolated between the nearest measured k (linear in k, which is
    /// how a pass's matrix work grows), else a pessimistic 1 + k/2.
    pub fn ratio(&self, k: usize) -> f64 {
        if self.plain_ns <= 0.0 {
            return 1.0 + k as f64 / 2.0;
        }
        if let Some(&v) = self.verify_ns.get(k).filter(|v| **v > 0.0) {
            return v / self.plain_ns;
        }
        let known = (1..self.verify_ns.len())
            .filter(|&j| self.verify_ns[j] > 0.0)
            .min_by_key(|&j| j.abs_diff(k));
        match known {
            Some(j) => {
                let per = (self.verify_ns[j] / self.plain_ns - 1.0).max(0.0) / j as f64;
                1.0 + per * k as f64
            }
            None => 1.0 + k as f64 / 2.0,
        }
    }
}

/// Decay of the acceptance counts per verify: about the last 10 verifies
/// decide, so a change of context (a quoted passage ends) is seen quickly.
const DECAY: f64 = 0.9;
/// Expected gain a verify must promise over plain steps.
const MIN_GAIN: f64 = 1.05;

/// Speculation counters and state of one generation.
#[derive(Default, Clone, Debug)]
pub struct SpecState {
    /// Drafts verified and accepted (real verifies only).
    pub drafted: u64,
    pub accepted: u64,
    /// Verify passes and the tokens they produced.
    pub verify_steps: u64,
    pub verify_tokens: u64,
    /// Decode steps without a verify (no draft, or not worth it).
    pub plain_steps: u64,
    /// Decayed accepted/drafted counts (real and shadow) for the decision.
    acc_w: f64,
    drafted_w: f64,
    /// A draft not verified (speculation was off), scored against the
    /// tokens plain decoding produces.
    shadow: Vec<u32>,
    shadow_pos: usize,
    /// Decode time the request would have taken in plain steps (estimated
    /// from the worker's plain-step cost) and the time it took.
    pub est_plain_ns: f64,
    pub actual_ns: f64,
    /// Scratch: the current draft and the verify pass's input tokens.
    pub draft: Vec<u32>,
    pub pass: Vec<u32>,
}

impl SpecState {
    /// Recent acceptance per draft token, with a prior of 1 in 2.
    pub fn acceptance(&self) -> f64 {
        (self.acc_w + 1.0) / (self.drafted_w + 2.0)
    }

    /// How many of `avail` drafts to verify; 0 means a plain step. The
    /// expected tokens of a verify of k drafts at acceptance a are
    /// (1 − a^(k+1)) / (1 − a); it must beat its cost in plain steps.
    pub fn choose(&self, avail: usize, costs: &StepCosts) -> usize {
        let a = self.acceptance().clamp(0.0, 0.99);
        let mut best = (0, MIN_GAIN);
        for k in 1..=avail {
            let expected = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            let gain = expected / costs.ratio(k);
            if gain > best.1 {
                best = (k, gain);
            }
        }
        best.0
    }

    fn observe(&mut self, drafted: usize, accepted: usize) {
        self.acc_w = self.acc_w * DECAY + accepted as f64;
        self.drafted_w = self.drafted_w * DECAY + drafted as f64;
    }

    /// A verify of `drafted` drafts kept `accepted` and produced `tokens`.
    pub fn record_verify(&mut self, drafted: usize, accepted: usize, tokens: usize) {
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        self.verify_steps += 1;
        self.verify_tokens += tokens as u64;
        self.observe(drafted, accepted);
        self.shadow.clear();
    }

    /// Keeps the current draft to score against plain decoding.
    pub fn shadow_draft(&mut self) {
        if self.shadow.is_empty() && !self.draft.is_empty() {
            self.shadow.clear();
            self.shadow.extend_from_slice(&self.draft);
            self.shadow_pos = 0;
        }
    }

    /// A plain step produced `token`: scores the shadow draft, if any, as a
    /// verify of it would have gone.
    pub fn plain_token(&mut self, token: u32) {
        self.plain_steps += 1;
        if self.shadow.is_empty() {
            return;
        }
        if self.shadow[self.shadow_pos] == token {
            self.shadow_pos += 1;
            if self.shadow_pos < self.shadow.len() {
                return;
            }
        }
        let (n, ok) = (self.shadow.len(), self.shadow_pos);
        self.observe(n, ok);
        self.shadow.clear();
    }

    /// Estimated plain decode time over actual decode time (1 when nothing
    /// was measured).
    pub fn tpot_gain(&self) -> f64 {
        if self.actual_ns > 0.0 && self.est_plain_ns > 0.0 {
            self.est_plain_ns / self.actual_ns
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SpecConfig {
        SpecConfig {
            mode: SpecMode::PromptLookup,
            ..Default::default()
        }
    }

    #[test]
    fn lookup_takes_the_latest_longest_match() {
        let mut out = Vec::new();
        // "a b c X Y | a b c Z W | ... b c" → the latest "b c" is followed by Z W.
        let seq = [1, 2, 3, 10, 11, 1, 2, 3, 20, 21, 9, 2, 3];
        assert!(lookup(&seq, &cfg(), 4, &mut out));
        assert_eq!(out, vec![20, 21, 9, 2]);
        // A 3-gram match beats a later 1-gram one.
        let seq = [5, 6, 7, 8, 9, 7, 1, 5, 6, 7];
        assert!(lookup(&seq, &cfg(), 2, &mut out));
        assert_eq!(out, vec![8, 9]);
        assert!(!lookup(&[1, 2, 3], &cfg(), 4, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn low_acceptance_turns_speculation_off_and_shadow_scoring_back_on() {
        let mut costs = StepCosts::new(4);
        costs.record_plain(10.0);
        costs.record_verify(4, 14.0);
        let mut s = SpecState::default();
        assert!(s.choose(4, &costs) > 0, "the prior speculates");
        for _ in 0..20 {
            s.record_verify(4, 0, 1);
        }
        assert_eq!(s.choose(4, &costs), 0, "nothing accepted: off");
        // Drafts that would all have been accepted bring it back.
        for _ in 0..20 {
            s.draft = vec![7, 8];
            s.shadow_draft();
            s.plain_token(7);
            s.plain_token(8);
        }
        assert!(s.choose(4, &costs) > 0, "acceptance {}", s.acceptance());
    }

    #[test]
    fn unmeasured_ratios_interpolate_from_measured_ones() {
        let mut c = StepCosts::new(8);
        assert_eq!(c.ratio(2), 2.0);
        c.record_plain(10.0);
        c.record_verify(4, 12.0);
        assert!((c.ratio(4) - 1.2).abs() < 1e-9);
        assert!((c.ratio(2) - 1.1).abs() < 1e-9);
    }
}
