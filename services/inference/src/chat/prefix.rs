//! The prefix cache of one chat model: the keys and values of recent prompts, in blocks
//! of [`BLOCK`] tokens from the start, so that a prompt beginning like a recent one (a
//! persona's system prompt, RAG instructions, the chat template's preamble) prefills
//! only what follows. Each prompt also leaves its tail (the tokens after its last full
//! block but its last token) as a shorter block, so the same prompt again (a retry, a
//! regenerated answer, a benchmark's repeated prompts) finds all but its last token
//! cached. A block is keyed by a hash of every token up to its end (its parent block's
//! key and its own tokens, both checked on a hit, so a hash collision cannot hand a
//! prompt another prompt's cache). Memory is bounded: the least recently used blocks go
//! first, a prompt's later blocks before its earlier ones (which more prompts share).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    ops::Range,
};

use super::model::{PrefillCache, Shape};

/// Tokens per full block: small enough that a shared system prompt leaves few of its
/// tokens to prefill again (at most 15), large enough that copying blocks stays cheap.
pub const BLOCK: usize = 16;

struct Block {
    parent: u64,
    /// Its place from the start (0 for a prompt's first block).
    depth: usize,
    /// [`BLOCK`] tokens, or fewer for a prompt's tail.
    tokens: Vec<u32>,
    /// Per layer: key, value, each [kv_heads, tokens.len(), head_dim].
    kv: Vec<[Vec<f32>; 2]>,
    used: u64,
}

/// Cached leading blocks of recent prompts, within a byte budget.
pub struct PrefixCache {
    shape: Shape,
    capacity: usize,
    bytes: usize,
    blocks: HashMap<u64, Block>,
    clock: u64,
}

/// The key of the block holding `tokens` after the block keyed `parent`.
fn key(parent: u64, tokens: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parent.hash(&mut hasher);
    tokens.hash(&mut hasher);
    hasher.finish()
}

impl PrefixCache {
    /// A cache of at most `capacity` bytes for a model of `shape` (0: always empty).
    pub fn new(shape: Shape, capacity: usize) -> PrefixCache {
        PrefixCache {
            shape,
            capacity,
            bytes: 0,
            blocks: HashMap::new(),
            clock: 0,
        }
    }

    /// Bytes one position of a block holds.
    fn position_bytes(&self) -> usize {
        let s = self.shape;
        s.layers * 2 * s.kv_heads * s.head_dim * std::mem::size_of::<f32>()
    }

    /// Bytes one full block holds.
    pub fn block_bytes(&self) -> usize {
        BLOCK * self.position_bytes()
    }

    /// Whether a full block fits in the budget at all.
    pub fn enabled(&self) -> bool {
        self.block_bytes() <= self.capacity
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many of `prompt`'s leading positions a lookup would find (without counting
    /// as a use).
    pub fn cached_len(&self, prompt: &[u32]) -> usize {
        self.chain(prompt).iter().map(|&(_, len)| len).sum()
    }

    /// The keys and lengths of `prompt`'s cached leading blocks, leaving at least its
    /// last token: full blocks, then its tail when every full block before it is there.
    fn chain(&self, prompt: &[u32]) -> Vec<(u64, usize)> {
        let mut keys = Vec::new();
        let mut parent = 0;
        for tokens in prompt[..prompt.len().saturating_sub(1)].chunks(BLOCK) {
            let key = key(parent, tokens);
            match self.blocks.get(&key) {
                Some(block) if block.parent == parent && block.tokens == tokens => {}
                _ => break,
            }
            keys.push((key, tokens.len()));
            parent = key;
        }
        keys
    }

    /// The cached leading blocks of `prompt` (leaving at least its last token to run,
    /// which gives the logits to sample from), assembled into one cache, and how many
    /// positions it holds; `None` when not even the first block is cached.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(PrefillCache, usize)> {
        let keys = self.chain(prompt);
        if keys.is_empty() {
            return None;
        }
        self.clock += 1;
        let s = self.shape;
        let len = keys.iter().map(|&(_, n)| n).sum();
        let mut cache: PrefillCache = (0..s.layers)
            .map(|_| {
                [
                    vec![0.0; s.kv_heads * len * s.head_dim],
                    vec![0.0; s.kv_heads * len * s.head_dim],
                ]
            })
            .collect();
        for (index, (key, n)) in keys.iter().enumerate() {
            let block = self.blocks.get_mut(key)?;
            block.used = self.clock;
            let run = n * s.head_dim;
            for (layer, parts) in block.kv.iter().enumerate() {
                for (part, data) in parts.iter().enumerate() {
                    for head in 0..s.kv_heads {
                        let to = (head * len + index * BLOCK) * s.head_dim;
                        cache[layer][part][to..to + run]
                            .copy_from_slice(&data[head * run..(head + 1) * run]);
                    }
                }
            }
        }
        Some((cache, len))
    }

    /// Keeps the full blocks of `prompt` and its tail from its `cache` (as prefill
    /// leaves it, [kv_heads, prompt.len(), head_dim] per layer), evicting the least
    /// recently used blocks beyond the budget.
    pub fn insert(&mut self, prompt: &[u32], cache: &PrefillCache) {
        if !self.enabled() {
            return;
        }
        let len = prompt.len();
        self.clock += 1;
        // The full blocks, each after the one before it (a prompt ending on a block
        // keeps that block too: a longer prompt's lookup finds it).
        let mut full = Vec::new();
        let mut parent = 0;
        for start in (0..len / BLOCK * BLOCK).step_by(BLOCK) {
            parent = self.keep(parent, prompt, start..start + BLOCK, cache);
            full.push(parent);
        }
        // Then the tail, what a lookup of the same prompt walks last: the tokens after
        // the last full block before the prompt's last token.
        let tail = len.saturating_sub(1) / BLOCK * BLOCK..len.saturating_sub(1);
        if !tail.is_empty() {
            let parent = match tail.start / BLOCK {
                0 => 0,
                depth => full[depth - 1],
            };
            self.keep(parent, prompt, tail, cache);
        }
        while self.bytes > self.capacity {
            let oldest = self
                .blocks
                .iter()
                .min_by_key(|(_, block)| (block.used, std::cmp::Reverse(block.depth)));
            let Some((&oldest, _)) = oldest else {
                break;
            };
            if let Some(block) = self.blocks.remove(&oldest) {
                self.bytes -= block.tokens.len() * self.position_bytes();
            }
        }
    }

    /// Keeps the block of `prompt`'s tokens in `span` after `parent` (copied from the
    /// prompt's `cache`, or marked used when already there); answers its key.
    fn keep(
        &mut self,
        parent: u64,
        prompt: &[u32],
        span: Range<usize>,
        cache: &PrefillCache,
    ) -> u64 {
        let tokens = &prompt[span.clone()];
        let key = key(parent, tokens);
        if let Some(block) = self.blocks.get_mut(&key) {
            block.used = self.clock;
            return key;
        }
        let s = self.shape;
        let run = span.len() * s.head_dim;
        let kv = cache
            .iter()
            .map(|parts| {
                parts.each_ref().map(|data| {
                    (0..s.kv_heads)
                        .flat_map(|head| {
                            let from = (head * prompt.len() + span.start) * s.head_dim;
                            data[from..from + run].iter().copied()
                        })
                        .collect()
                })
            })
            .collect();
        self.blocks.insert(
            key,
            Block {
                parent,
                depth: span.start / BLOCK,
                tokens: tokens.to_vec(),
                kv,
                used: self.clock,
            },
        );
        self.bytes += span.len() * self.position_bytes();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
        vocab: 10,
        max_context: 1024,
    };

    /// A cache whose every value names its layer, part, head and position.
    fn cache_of(len: usize) -> PrefillCache {
        (0..SHAPE.layers)
            .map(|layer| {
                [0, 1].map(|part| {
                    (0..SHAPE.kv_heads)
                        .flat_map(|head| {
                            (0..len * SHAPE.head_dim).map(move |i| {
                                (layer * 1_000_000 + part * 100_000 + head * 10_000 + i) as f32
                            })
                        })
                        .collect()
                })
            })
            .collect()
    }

    /// Asserts that `hit` holds the first `len` positions of `cache_of(total)`.
    fn assert_leading(hit: &PrefillCache, len: usize, total: usize) {
        let expected = cache_of(total);
        for layer in 0..SHAPE.layers {
            for part in 0..2 {
                for head in 0..SHAPE.kv_heads {
                    let run = len * SHAPE.head_dim;
                    let from = head * total * SHAPE.head_dim;
                    assert_eq!(
                        hit[layer][part][head * run..(head + 1) * run],
                        expected[layer][part][from..from + run]
                    );
                }
            }
        }
    }

    #[test]
    fn a_shared_prefix_comes_back_block_aligned_and_bit_for_bit() {
        let mut cache = PrefixCache::new(SHAPE, usize::MAX);
        let total = 3 * BLOCK + BLOCK / 2;
        let first: Vec<u32> = (0..total as u32).collect();
        cache.insert(&first, &cache_of(total));
        // Three full blocks and the tail (all but the last of the 8 tokens after them).
        assert_eq!(
            cache.bytes(),
            3 * cache.block_bytes() + 7 * cache.block_bytes() / BLOCK
        );

        // The same leading tokens into the third block, then others: two blocks hit.
        let mut second: Vec<u32> = (0..(2 * BLOCK + 3) as u32).collect();
        second.extend(900..960);
        let (hit, len) = cache.lookup(&second).unwrap();
        assert_eq!(len, 2 * BLOCK);
        assert_leading(&hit, len, total);
        // A prompt of exactly one block keeps its last token to prefill: no hit.
        assert!(cache.lookup(&first[..BLOCK]).is_none());
        assert_eq!(cache.lookup(&first[..BLOCK + 1]).unwrap().1, BLOCK);
        // A different first block: nothing, even if later blocks match.
        let mut other = first.clone();
        other[3] = 999;
        assert!(cache.lookup(&other).is_none());
    }

    #[test]
    fn the_same_prompt_again_finds_all_but_its_last_token() {
        let mut cache = PrefixCache::new(SHAPE, usize::MAX);
        // Lengths with a tail, with none (one past a block) and ending on a block.
        for total in [2 * BLOCK + 5, 2 * BLOCK + 1, 2 * BLOCK, 3] {
            let prompt: Vec<u32> = (0..total as u32).map(|t| t + 100 * total as u32).collect();
            cache.insert(&prompt, &cache_of(total));
            let (hit, len) = cache.lookup(&prompt).unwrap();
            assert_eq!(len, total - 1, "a prompt of {total}");
            assert_leading(&hit, len, total);
            // A longer prompt over the same tokens finds the full blocks only (the tail
            // is a different block from the one it would need).
            let mut longer = prompt.clone();
            longer.extend([7, 7, 7]);
            assert_eq!(
                cache.lookup(&longer).map_or(0, |(_, len)| len),
                total / BLOCK * BLOCK
            );
        }
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_blocks() {
        let probe = PrefixCache::new(SHAPE, 0);
        let mut cache = PrefixCache::new(SHAPE, 3 * probe.block_bytes());
        let len = 2 * BLOCK + 1;
        let a: Vec<u32> = (0..len as u32).collect();
        let b: Vec<u32> = (1000..1000 + len as u32).collect();
        cache.insert(&a, &cache_of(len));
        cache.insert(&b, &cache_of(len));
        assert_eq!(cache.bytes(), 3 * cache.block_bytes());
        // a's blocks were the oldest, its later one goes first; b's blocks stay.
        assert_eq!(cache.lookup(&b).unwrap().1, 2 * BLOCK);
        assert_eq!(cache.lookup(&a).unwrap().1, BLOCK);
        // Nothing fits in a cache smaller than a block.
        let mut none = PrefixCache::new(SHAPE, 0);
        none.insert(&a, &cache_of(len));
        assert_eq!(none.bytes(), 0);
        assert!(none.lookup(&a).is_none());
    }
}
