//! Choosing the next token from a row of logits: penalties, temperature, top-k, top-p,
//! min-p, and a seeded random draw (greedy at temperature 0); plus the log probabilities
//! a request may ask for.

use std::collections::{HashMap, HashSet};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use slough_protocol::inference::SamplingParams;

/// Sampling settings with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Settings {
    /// `params` over the model's defaults.
    pub fn resolve(
        params: &SamplingParams,
        default_temperature: f32,
        default_top_p: f32,
    ) -> Settings {
        Settings {
            temperature: params.temperature.unwrap_or(default_temperature),
            top_p: params.top_p.unwrap_or(default_top_p),
            top_k: params.top_k.unwrap_or(0) as usize,
            min_p: params.min_p.unwrap_or(0.0),
            repetition_penalty: params.repetition_penalty.unwrap_or(1.0),
            presence_penalty: params.presence_penalty.unwrap_or(0.0),
            frequency_penalty: params.frequency_penalty.unwrap_or(0.0),
        }
    }
}

/// The sampler of one sequence: its settings, its random stream, and the tokens it has
/// seen (for the penalties).
#[derive(Debug)]
pub struct Sampler {
    settings: Settings,
    rng: ChaCha8Rng,
    /// Prompt and generated tokens (repetition penalty).
    seen: HashSet<u32>,
    /// Generated tokens and how often (presence and frequency penalties).
    generated: HashMap<u32, u32>,
    /// Scratch space for candidates, reused between steps.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(settings: Settings, seed: u64, prompt: &[u32]) -> Sampler {
        Sampler {
            settings,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seen: prompt.iter().copied().collect(),
            generated: HashMap::new(),
            candidates: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (changed in place by the penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.penalize(logits);
        let s = self.settings;
        let token = if s.temperature == 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        self.seen.insert(token);
        *self.generated.entry(token).or_insert(0) += 1;
        token
    }

    fn penalize(&self, logits: &mut [f32]) {
        let s = self.settings;
        if s.repetition_penalty != 1.0 {
            for &token in &self.seen {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit = if *logit > 0.0 {
                        *logit / s.repetition_penalty
                    } else {
                        *logit * s.repetition_penalty
                    };
                }
            }
        }
        if s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
            for (&token, &count) in &self.generated {
                if let Some(logit) = logits.get_mut(token as usize) {
                    *logit -= s.presence_penalty + s.frequency_penalty * count as f32;
                }
            }
        }
    }

    /// Temperature, then the filters, then a draw from what is left.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let s = self.settings;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let candidates = &mut self.candidates;
        candidates.clear();
        // Unnormalized probabilities; min-p is a threshold relative to the best one.
        let floor = if s.min_p > 0.0 { s.min_p } else { 0.0 };
        candidates.extend(logits.iter().enumerate().filter_map(|(i, &logit)| {
            let p = ((logit - max) / s.temperature).exp();
            (p > 0.0 && p >= floor).then_some((i as u32, p))
        }));
        if s.top_k > 0 && candidates.len() > s.top_k {
            candidates.select_nth_unstable_by(s.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            candidates.truncate(s.top_k);
        }
        if s.top_p < 1.0 {
            keep_nucleus(candidates, s.top_p);
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        let mut target = self.rng.random::<f32>() * total;
        for &(token, p) in candidates.iter() {
            target -= p;
            if target <= 0.0 {
                return token;
            }
        }
        candidates.last().map_or_else(|| argmax(logits), |c| c.0)
    }
}

/// Keeps the most likely candidates until their share reaches `top_p`. Sorts only as
/// many as needed: the best 64, then 512, then all.
fn keep_nucleus(candidates: &mut Vec<(u32, f32)>, top_p: f32) {
    let total: f32 = candidates.iter().map(|c| c.1).sum();
    let goal = top_p * total;
    let mut head = 64;
    loop {
        let head_len = head.min(candidates.len());
        if head_len < candidates.len() {
            candidates.select_nth_unstable_by(head_len - 1, |a, b| b.1.total_cmp(&a.1));
        }
        candidates[..head_len].sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut sum = 0.0;
        for (i, c) in candidates[..head_len].iter().enumerate() {
            sum += c.1;
            if sum >= goal {
                candidates.truncate(i + 1);
                return;
            }
        }
        if head_len == candidates.len() {
            return;
        }
        head *= 8;
    }
}

/// The index of the largest logit (the first on a tie).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The log probability of `token` and of the `top` most likely tokens, from raw logits.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    let chosen = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |l| l - log_sum);
    if top == 0 {
        return (chosen, Vec::new());
    }
    let mut indexed: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l - log_sum))
        .collect();
    let top = top.min(indexed.len());
    indexed.select_nth_unstable_by(top - 1, |a, b| b.1.total_cmp(&a.1));
    indexed.truncate(top);
    indexed.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    (chosen, indexed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(temperature: f32) -> Settings {
        Settings::resolve(&SamplingParams::default(), temperature, 1.0)
    }

    #[test]
    fn greedy_takes_the_largest_and_penalties_change_it() {
        let mut logits = vec![1.0, 3.0, 2.0];
        assert_eq!(Sampler::new(settings(0.0), 0, &[]).sample(&mut logits), 1);
        let mut penalized = Settings::resolve(
            &SamplingParams {
                repetition_penalty: Some(2.0),
                ..SamplingParams::default()
            },
            0.0,
            1.0,
        );
        let mut logits = vec![1.0, 3.0, 2.0];
        assert_eq!(Sampler::new(penalized, 0, &[1]).sample(&mut logits), 2);
        penalized.repetition_penalty = 1.0;
        penalized.presence_penalty = 1.5;
        let mut sampler = Sampler::new(penalized, 0, &[]);
        assert_eq!(sampler.sample(&mut [1.0, 3.0, 2.0]), 1);
        assert_eq!(
            sampler.sample(&mut [1.0, 3.0, 2.0]),
            2,
            "1 was generated once"
        );
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_filters_hold() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let draw = |seed, s: Settings| {
            let mut sampler = Sampler::new(s, seed, &[]);
            (0..50)
                .map(|_| sampler.sample(&mut logits.clone()))
                .collect::<Vec<u32>>()
        };
        assert_eq!(draw(7, settings(1.0)), draw(7, settings(1.0)));
        assert_ne!(draw(7, settings(1.0)), draw(8, settings(1.0)));
        let mut top_k = settings(1.0);
        top_k.top_k = 3;
        let mut best: Vec<u32> = (0..1000).collect();
        best.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        assert!(draw(1, top_k).iter().all(|t| best[..3].contains(t)));
        let mut nucleus = settings(1.0);
        nucleus.top_p = 0.05;
        let kept = draw(2, nucleus);
        assert!(kept.iter().all(|t| best[..40].contains(t)), "{kept:?}");
        let mut min_p = settings(1.0);
        min_p.min_p = 0.9;
        assert!(
            draw(3, min_p)
                .iter()
                .all(|&t| logits[t as usize] >= logits[best[0] as usize] + 0.9f32.ln())
        );
    }

    #[test]
    fn logprobs_are_normalized_and_sorted() {
        let (chosen, top) = logprobs(&[0.0, 1.0, 2.0], 2, 2);
        let total: f32 = [0.0f32, 1.0, 2.0].iter().map(|l| (l - 2.0f32).exp()).sum();
        assert!((chosen + total.ln()).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 1]);
    }
}
