//! Token sampling: the last step of each decode turn, between the model's
//! logits and the token appended to the sequence. Greedy when temperature is
//! 0; otherwise repetition penalty → temperature → top-k → top-p, drawn with a
//! seeded generator so the same seed gives the same tokens.

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

/// Picks the next token from `logits` (modified in place by the penalty).
pub fn sample(logits: &mut [f32], history: &[u32], p: &Sampling, rng: &mut Rng) -> u32 {
    if p.repetition_penalty != 1.0 {
        for &t in history {
            if let Some(l) = logits.get_mut(t as usize) {
                // CTRL-style penalty: shrink positive logits, grow negative.
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut total = 0.0f32;
    for c in cand.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            acc += c.1 / total;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        total = cand.iter().map(|c| c.1).sum();
    }
    let mut r = rng.next_f32() * total;
    for c in &cand {
        if r < c.1 {
            return c.0;
        }
        r -= c.1;
    }
    cand.last().expect("at least one candidate").0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut l = vec![0.1, 2.0, -1.0, 1.9];
        assert_eq!(
            sample(&mut l, &[], &Sampling::default(), &mut Rng::new(1)),
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
        assert_eq!(sample(&mut l, &[1], &p, &mut Rng::new(1)), 3);
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
                .map(|_| sample(&mut logits.clone(), &[], &p, &mut rng))
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
            assert_eq!(sample(&mut [5.0, 3.0, 0.0], &[], &p, &mut rng), 0);
        }
    }
}
