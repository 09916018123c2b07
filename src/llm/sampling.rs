//! Token sampling: the last step of each decode turn, between the model's
//! logits and the token appended to the sequence. Greedy when temperature is
//! 0; otherwise repetition penalty → temperature → top-k → top-p, drawn with a
//! seeded generator so the same seed gives the same tokens. Candidates are
//! found by partial selection (linear in the vocabulary), never by sorting
//! all of it, in memory reused from step to step ([`Scratch`]).

pub use crate::wire::command::Sampling;

/// SplitMix64: small, fast and reproducible across platforms; sampling needs
/// nothing stronger.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Index of the largest value (first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Reusable memory of the sampler (one per worker): candidate indices for
/// partial selection, so a step allocates nothing however large the
/// vocabulary.
#[derive(Default)]
pub struct Scratch {
    idx: Vec<u32>,
    weight: Vec<f64>,
}

/// Applies the CTRL-style repetition penalty to the tokens in `history`.
fn penalize(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &t in history {
        if let Some(l) = logits.get_mut(t as usize) {
            // Shrink positive logits, grow negative ones.
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Orders `idx` so its first `n` entries are the `n` largest logits, in
/// descending order (ties by token id, as a full sort would leave them):
/// a linear selection, then a sort of those `n` only.
fn top_n(idx: &mut [u32], logits: &[f32], n: usize) {
    let by = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if n < idx.len() {
        idx.select_nth_unstable_by(n, by);
    }
    idx[..n].sort_unstable_by(by);
}

/// Picks the next token from `logits` (modified in place by the penalty).
/// Greedy when `temperature <= 0`; otherwise temperature → top-k → top-p,
/// drawn from `rng`. Never sorts the whole vocabulary: top-k selects `k`
/// candidates in linear time; top-p alone grows a selected prefix (64,
/// 256, …) until it holds the nucleus.
pub fn sample(
    logits: &mut [f32],
    history: &[u32],
    p: &Sampling,
    rng: &mut Rng,
    s: &mut Scratch,
) -> u32 {
    penalize(logits, history, p.repetition_penalty);
    if p.temperature <= 0.0 || logits.len() < 2 {
        return argmax(logits) as u32;
    }
    let v = logits.len();
    let w = Weight {
        t: p.temperature,
        max: f64::from(logits[argmax(logits)] / p.temperature),
    };
    s.idx.clear();
    s.idx.extend(0..v as u32);
    // The mass the top-p fraction is taken of: all tokens, or the top k.
    let (kept, total) = if p.top_k > 0 && p.top_k < v {
        top_n(&mut s.idx, logits, p.top_k);
        let total = s.idx[..p.top_k]
            .iter()
            .map(|&i| w.of(logits[i as usize]))
            .sum();
        (p.top_k, total)
    } else {
        let total = logits.iter().map(|&l| w.of(l)).sum();
        (v, total)
    };
    let n = if p.top_p < 1.0 {
        nucleus(s, logits, kept, total, w, p.top_p)
    } else {
        // Top-k alone draws among its sorted k; plain temperature sampling
        // draws over the vocabulary in id order (no ordering needed).
        kept
    };
    draw(s, logits, n, w, rng)
}

/// Unnormalised probability of a logit at temperature `t`, relative to the
/// largest logit (`max` is already divided by `t`).
#[derive(Clone, Copy)]
struct Weight {
    t: f32,
    max: f64,
}

impl Weight {
    /// In f64: sums over a whole vocabulary must not depend on their order.
    fn of(self, l: f32) -> f64 {
        (f64::from(l / self.t) - self.max).exp()
    }
}

/// Size of the smallest descending prefix of the first `kept` candidates
/// holding `top_p` of `total`; `s.idx` is ordered over that prefix.
fn nucleus(
    s: &mut Scratch,
    logits: &[f32],
    kept: usize,
    total: f64,
    w: Weight,
    top_p: f32,
) -> usize {
    let mut sorted = if kept == logits.len() { 0 } else { kept };
    let mut want = 64.min(kept);
    loop {
        if sorted < want {
            top_n(&mut s.idx[..kept], logits, want);
            sorted = want;
        }
        let mut acc = 0.0;
        for (i, &t) in s.idx[..sorted].iter().enumerate() {
            acc += w.of(logits[t as usize]) / total;
            if acc >= f64::from(top_p) {
                return i + 1;
            }
        }
        if sorted == kept {
            return kept;
        }
        want = (want * 4).min(kept);
    }
}

/// Draws one of the first `n` candidates of `s.idx` in proportion to its
/// weight.
fn draw(s: &mut Scratch, logits: &[f32], n: usize, w: Weight, rng: &mut Rng) -> u32 {
    s.weight.clear();
    s.weight
        .extend(s.idx[..n].iter().map(|&i| w.of(logits[i as usize])));
    let total: f64 = s.weight.iter().sum();
    let mut r = f64::from(rng.next_f32()) * total;
    for (&t, &w) in s.idx[..n].iter().zip(&s.weight) {
        if r < w {
            return t;
        }
        r -= w;
    }
    s.idx[n - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut l = vec![0.1, 2.0, -1.0, 1.9];
        assert_eq!(
            sample(
                &mut l,
                &[],
                &Sampling::default(),
                &mut Rng::new(1),
                &mut Scratch::default()
            ),
            1
        );
    }

    #[test]
    fn repetition_penalty_can_change_the_choice() {
        let p = Sampling {
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let mut l = vec![0.1, 2.0, -1.0, 1.9];
        assert_eq!(
            sample(&mut l, &[1], &p, &mut Rng::new(1), &mut Scratch::default()),
            3
        );
    }

    #[test]
    fn same_seed_same_draws_and_top_k_bounds_choices() {
        let p = Sampling {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..Default::default()
        };
        let logits = vec![1.0, 0.9, 0.8, 5.0, 4.9];
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| {
                    sample(
                        &mut logits.clone(),
                        &[],
                        &p,
                        &mut rng,
                        &mut Scratch::default(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(a.iter().all(|&t| t == 3 || t == 4), "{a:?}");
        assert!(
            a.contains(&3) && a.contains(&4),
            "both top-2 tokens drawn: {a:?}"
        );
    }

    /// The sampler before partial selection: sort everything, cut, draw.
    fn full_sort_sample(logits: &[f32], p: &Sampling, rng: &mut Rng) -> u32 {
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, f64::from(l / p.temperature)))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut total = 0.0f64;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1 / total;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            total = cand.iter().map(|c| c.1).sum();
        }
        let mut r = f64::from(rng.next_f32()) * total;
        for c in &cand {
            if r < c.1 {
                return c.0;
            }
            r -= c.1;
        }
        cand.last().unwrap().0
    }

    #[test]
    fn partial_selection_draws_what_a_full_sort_draws() {
        // A vocabulary-sized, peaky-but-wide distribution (like an LM's).
        let mut g = Rng::new(11);
        let logits: Vec<f32> = (0..49_152)
            .map(|_| {
                let u = g.next_f32();
                8.0 * u * u * u * u - 4.0
            })
            .collect();
        let mut s = Scratch::default();
        for (top_k, top_p) in [(40, 1.0), (0, 0.9), (0, 0.2), (500, 0.95), (1, 1.0)] {
            let p = Sampling {
                temperature: 0.8,
                top_k,
                top_p,
                ..Default::default()
            };
            for seed in 0..40 {
                let a = sample(&mut logits.clone(), &[], &p, &mut Rng::new(seed), &mut s);
                let b = full_sort_sample(&logits, &p, &mut Rng::new(seed));
                assert_eq!(a, b, "top_k {top_k} top_p {top_p} seed {seed}");
            }
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let p = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            // Token 0 alone holds ~88% of the mass.
            assert_eq!(
                sample(
                    &mut [5.0, 3.0, 0.0],
                    &[],
                    &p,
                    &mut rng,
                    &mut Scratch::default()
                ),
                0
            );
        }
    }
}
