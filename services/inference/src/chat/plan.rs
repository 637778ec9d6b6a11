//! What the scheduler does on one turn, decided by a pure function of plain numbers
//! ([`plan`]), so that the policy is tested without a model.
//!
//! The rules:
//! - Requests are admitted in arrival order. The first one always goes when its choices
//!   fit the batch (a long prompt is never starved by the budget); more follow while
//!   their uncached prompt tokens fit the prefill budget and their choices the batch, so
//!   a burst starts together without stalling the running streams for long. The
//!   admitted prompts are prefilled together (right-padded) unless padding would more
//!   than double the work.
//! - Admission also keeps the KV buffer within its limit, counting every sequence at its
//!   longest (prompt plus `max_tokens`), so that growing later never passes it. A
//!   request that does not fit even alone in an empty batch never will: it is refused.
//! - While streams run, a prompt whose uncached part is longer than the prefill budget
//!   is prefilled one budget-sized chunk per turn, so that the running streams' next
//!   token waits for one chunk rather than the whole prompt.
//! - The buffer grows to hold what runs this turn (kept at its old size where it can be,
//!   within the limit), and shrinks once the batch has thinned out to a quarter of its
//!   rows or positions while nobody waits. An idle buffer stays for the next request.

use super::model::{Layout, Shape};

/// The scheduler's settings that bound a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sequences decoded at once.
    pub max_batch: usize,
    /// Prompt tokens prefilled per turn beyond the first request; also the chunk size.
    pub prefill_budget: usize,
    /// Most bytes the KV buffer may take.
    pub kv_limit: usize,
}

/// A running sequence as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Positions it holds in the buffer.
    pub len: usize,
    /// The most positions it can reach (its prompt plus `max_tokens`).
    pub longest: usize,
}

/// A waiting request as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub prompt_tokens: usize,
    /// Its prompt's leading positions that the prefix cache holds.
    pub cached_tokens: usize,
    /// Choices it asks for: sequences it will take in the batch.
    pub choices: usize,
    pub max_tokens: usize,
}

impl Waiting {
    fn uncached(&self) -> usize {
        self.prompt_tokens - self.cached_tokens.min(self.prompt_tokens)
    }
}

/// The scheduler's state at the start of a turn.
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    pub shape: Shape,
    pub limits: Limits,
    pub running: &'a [Running],
    /// The front of the queue in arrival order: at least every request that could join
    /// the batch this turn (the scheduler looks up no more prompts than that).
    pub waiting: &'a [Waiting],
    /// How many requests wait in all.
    pub queued: usize,
    /// Positions of the front request's prompt prefilled so far, while it is prefilled
    /// a chunk per turn.
    pub partial: Option<usize>,
    /// The buffer laid out now, if any.
    pub layout: Option<Layout>,
}

/// The prefill work of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    Nothing,
    /// Start `count` requests from the front of the queue, their prompts prefilled in
    /// one call when `together` (each prefix-cache hit on its own in any case).
    Admit {
        count: usize,
        together: bool,
    },
    /// Prefill positions `from..to` of the front request's prompt (after the chunks
    /// before it, or after its cached beginning when `from` is the first); it starts
    /// when `to` reaches the end of its prompt.
    Chunk {
        from: usize,
        to: usize,
    },
    /// The front request cannot fit the KV-cache limit even alone: refuse it.
    Refuse,
}

/// What to do on a turn, before its decode step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub prefill: Prefill,
    /// The buffer to move the running sequences into first, when it is not the current
    /// one.
    pub layout: Option<Layout>,
}

/// Decides the turn for `state`.
pub fn plan(state: &State) -> Plan {
    let prefill = prefill(state);
    let started: &[Waiting] = match prefill {
        Prefill::Admit { count, .. } => &state.waiting[..count],
        Prefill::Chunk { to, .. } if state.waiting[0].prompt_tokens == to => &state.waiting[..1],
        _ => &[],
    };
    Plan {
        prefill,
        layout: layout(state, started),
    }
}

fn prefill(state: &State) -> Prefill {
    let Some(front) = state.waiting.first() else {
        return Prefill::Nothing;
    };
    let limits = state.limits;
    let chunk = limits.prefill_budget.max(1);
    let next_chunk = |from: usize| Prefill::Chunk {
        from,
        to: (from + chunk).min(front.prompt_tokens),
    };
    if let Some(done) = state.partial {
        return next_chunk(done);
    }
    if !state.running.is_empty()
        && front.uncached() > chunk
        && state.running.len() + front.choices <= limits.max_batch
        && kv_fits(state, &state.waiting[..1])
    {
        return next_chunk(front.cached_tokens.min(front.prompt_tokens));
    }
    let turn = admit(state.waiting, state.running.len(), limits);
    let mut count = turn.count;
    while count > 0 && !kv_fits(state, &state.waiting[..count]) {
        count -= 1;
    }
    if count > 0 {
        Prefill::Admit {
            count,
            // Fewer than the budget picked (the KV limit): one by one.
            together: turn.together && count == turn.count,
        }
    } else if turn.count > 0 && state.running.is_empty() {
        // Alone in an empty buffer and still too big: it never fits.
        Prefill::Refuse
    } else {
        Prefill::Nothing
    }
}

/// Requests taken by the budget and the batch alone.
struct Admission {
    count: usize,
    together: bool,
}

fn admit(waiting: &[Waiting], running: usize, limits: Limits) -> Admission {
    let (mut count, mut spent, mut sequences, mut longest) = (0, 0, running, 0);
    for request in waiting {
        let tokens = request.uncached();
        let over_budget = count > 0 && spent + tokens > limits.prefill_budget;
        if over_budget || sequences + request.choices > limits.max_batch {
            break;
        }
        count += 1;
        spent += tokens;
        sequences += request.choices;
        longest = longest.max(tokens);
    }
    Admission {
        count,
        together: count * longest <= 2 * spent,
    }
}

/// Whether the running sequences and `joining` fit the KV-cache limit, each counted at
/// its longest.
fn kv_fits(state: &State, joining: &[Waiting]) -> bool {
    let sequences = state.running.len() + joining.iter().map(|w| w.choices).sum::<usize>();
    let longest = state
        .running
        .iter()
        .map(|seq| seq.longest)
        .chain(joining.iter().map(|w| w.prompt_tokens + w.max_tokens))
        .max()
        .unwrap_or(0);
    let layout = state.shape.layout_for(sequences, longest);
    state.shape.layout_bytes(layout) <= state.limits.kv_limit
}

/// The buffer this turn needs when the current one will not do: room for each running
/// sequence's next position and for the prompts of the requests that start.
fn layout(state: &State, started: &[Waiting]) -> Option<Layout> {
    let sequences = state.running.len() + started.iter().map(|w| w.choices).sum::<usize>();
    if sequences == 0 {
        return None;
    }
    let positions = state
        .running
        .iter()
        .map(|seq| seq.len + 1)
        .chain(started.iter().map(|w| w.prompt_tokens + 1))
        .max()
        .unwrap_or(1);
    let shape = state.shape;
    let needed = shape.layout_for(sequences, positions);
    let Some(current) = state.layout else {
        return Some(needed);
    };
    if needed.rows <= current.rows && needed.capacity <= current.capacity {
        let thinned = needed.rows * 4 <= current.rows || needed.capacity * 4 <= current.capacity;
        let nobody_waits = state.queued == started.len();
        return (thinned && nobody_waits).then_some(needed);
    }
    let merged = Layout {
        rows: current.rows.max(needed.rows),
        capacity: current.capacity.max(needed.capacity),
    };
    // Rather than pass the limit, a buffer of just what is needed (rows renumbered).
    Some(if shape.layout_bytes(merged) <= state.limits.kv_limit {
        merged
    } else {
        needed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose position costs 8 bytes of keys and values per layer (1 KV head of
    /// 1 dimension, f32, key and value), 1 layer, 4096 positions.
    const SHAPE: Shape = Shape {
        layers: 1,
        kv_heads: 1,
        head_dim: 1,
        vocab: 32,
        max_context: 4096,
    };

    const LIMITS: Limits = Limits {
        max_batch: 16,
        prefill_budget: 256,
        kv_limit: usize::MAX,
    };

    fn waiting(prompts: &[usize]) -> Vec<Waiting> {
        prompts
            .iter()
            .map(|&prompt_tokens| Waiting {
                prompt_tokens,
                cached_tokens: 0,
                choices: 1,
                max_tokens: 16,
            })
            .collect()
    }

    fn running(lens: &[usize]) -> Vec<Running> {
        lens.iter()
            .map(|&len| Running {
                len,
                longest: len + 16,
            })
            .collect()
    }

    fn state<'a>(running: &'a [Running], waiting: &'a [Waiting]) -> State<'a> {
        State {
            shape: SHAPE,
            limits: LIMITS,
            running,
            waiting,
            queued: waiting.len(),
            partial: None,
            layout: None,
        }
    }

    fn admitted(plan: Plan) -> (usize, bool) {
        match plan.prefill {
            Prefill::Admit { count, together } => (count, together),
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn the_first_request_goes_even_over_the_budget() {
        let queue = waiting(&[2000, 10]);
        assert_eq!(admitted(plan(&state(&[], &queue))), (1, true));
    }

    #[test]
    fn a_burst_goes_together_within_the_budget() {
        let queue = waiting(&[60; 10]);
        let plan = plan(&state(&[], &queue));
        // Four prompts make 240 tokens; a fifth would make 300, over the budget.
        assert_eq!(admitted(plan), (4, true), "equal prompts pad nothing");
        assert_eq!(
            plan.layout,
            Some(Layout {
                rows: 4,
                capacity: 256
            })
        );
    }

    #[test]
    fn cached_tokens_do_not_count_against_the_budget() {
        let mut queue = waiting(&[200; 3]);
        for request in &mut queue {
            request.cached_tokens = 192;
        }
        assert_eq!(admitted(plan(&state(&[], &queue))).0, 3);
    }

    #[test]
    fn the_batch_bounds_the_sequences() {
        let queue = waiting(&[5; 10]);
        let busy = running(&[10; 14]);
        assert_eq!(admitted(plan(&state(&busy, &queue))).0, 2);
        let full = running(&[10; 16]);
        assert_eq!(plan(&state(&full, &queue)).prefill, Prefill::Nothing);
        let mut wide = waiting(&[5]);
        wide[0].choices = 4;
        let some = running(&[10; 13]);
        assert_eq!(
            plan(&state(&some, &wide)).prefill,
            Prefill::Nothing,
            "its 4 choices do not fit"
        );
    }

    #[test]
    fn prompts_of_very_different_lengths_are_prefilled_apart() {
        // 200 + 4 + 4 + 4 tokens, padded to 4 × 200 = 800 > 2 × 212.
        let queue = waiting(&[200, 4, 4, 4]);
        assert_eq!(admitted(plan(&state(&[], &queue))), (4, false));
        let close = waiting(&[50, 40, 60]);
        assert_eq!(admitted(plan(&state(&[], &close))), (3, true));
    }

    #[test]
    fn nothing_waiting_admits_nothing_and_keeps_the_buffer() {
        let idle = State {
            layout: Some(Layout {
                rows: 16,
                capacity: 2048,
            }),
            ..state(&[], &[])
        };
        assert_eq!(
            plan(&idle),
            Plan {
                prefill: Prefill::Nothing,
                layout: None
            }
        );
    }

    #[test]
    fn admission_stops_at_the_kv_limit_in_queue_order() {
        // Each request needs 10 + 246 = 256 positions at 8 bytes: 2 KiB a row. Rows go
        // by powers of two, so 4 rows (8 KiB) fit a 10 KiB limit and 8 do not.
        let mut queue = waiting(&[10; 6]);
        for request in &mut queue {
            request.max_tokens = 246;
        }
        let limited = State {
            limits: Limits {
                kv_limit: 10 * 1024,
                ..LIMITS
            },
            ..state(&[], &queue)
        };
        assert_eq!(
            admitted(plan(&limited)),
            (4, false),
            "fewer than the budget took go one by one"
        );
        // A later, smaller request does not overtake the front one.
        let mut queue = waiting(&[100, 10]);
        queue[0].max_tokens = 2000;
        let busy = running(&[100; 2]);
        let limited = State {
            limits: Limits {
                kv_limit: 16 * 1024,
                ..LIMITS
            },
            ..state(&busy, &queue)
        };
        assert_eq!(plan(&limited).prefill, Prefill::Nothing);
    }

    #[test]
    fn a_request_that_never_fits_is_refused_only_in_an_empty_batch() {
        let mut queue = waiting(&[100]);
        queue[0].max_tokens = 4000;
        let tight = Limits {
            kv_limit: 4 * 1024,
            ..LIMITS
        };
        let alone = State {
            limits: tight,
            ..state(&[], &queue)
        };
        assert_eq!(plan(&alone).prefill, Prefill::Refuse);
        let busy = running(&[10]);
        let behind = State {
            limits: tight,
            ..state(&busy, &queue)
        };
        assert_eq!(
            plan(&behind).prefill,
            Prefill::Nothing,
            "it may fit once the others finish"
        );
    }

    #[test]
    fn a_long_prompt_is_chunked_while_streams_run() {
        let queue = waiting(&[1000]);
        let busy = running(&[50; 3]);
        assert_eq!(
            plan(&state(&busy, &queue)).prefill,
            Prefill::Chunk { from: 0, to: 256 }
        );
        // Alone, it goes in one piece.
        assert_eq!(admitted(plan(&state(&[], &queue))).0, 1);
        // Its cached beginning is skipped.
        let mut cached = queue.clone();
        cached[0].cached_tokens = 512;
        assert_eq!(
            plan(&state(&busy, &cached)).prefill,
            Prefill::Chunk { from: 512, to: 768 }
        );
        // Short enough once the cache is counted: admitted whole.
        cached[0].cached_tokens = 800;
        assert_eq!(admitted(plan(&state(&busy, &cached))).0, 1);
    }

    #[test]
    fn a_chunked_prompt_goes_on_and_its_last_chunk_makes_room() {
        let queue = waiting(&[1000]);
        let busy = running(&[50; 3]);
        let middle = State {
            partial: Some(512),
            layout: Some(Layout {
                rows: 4,
                capacity: 256,
            }),
            ..state(&busy, &queue)
        };
        assert_eq!(
            plan(&middle),
            Plan {
                prefill: Prefill::Chunk { from: 512, to: 768 },
                layout: None,
            },
            "no room is made before the prompt starts"
        );
        let last = State {
            partial: Some(768),
            ..middle
        };
        assert_eq!(
            plan(&last),
            Plan {
                prefill: Prefill::Chunk {
                    from: 768,
                    to: 1000
                },
                layout: Some(Layout {
                    rows: 4,
                    capacity: 1024
                }),
            }
        );
    }

    #[test]
    fn a_prompt_is_not_chunked_when_it_could_not_join() {
        let queue = waiting(&[1000]);
        let full = running(&[50; 16]);
        assert_eq!(plan(&state(&full, &queue)).prefill, Prefill::Nothing);
    }

    #[test]
    fn the_buffer_grows_for_the_next_position_and_shrinks_when_thinned() {
        let current = Layout {
            rows: 16,
            capacity: 256,
        };
        let at_edge = running(&[256; 2]);
        let grow = State {
            layout: Some(current),
            ..state(&at_edge, &[])
        };
        assert_eq!(
            plan(&grow).layout,
            Some(Layout {
                rows: 16,
                capacity: 512
            }),
            "grown in place of its rows"
        );
        let limited = State {
            limits: Limits {
                kv_limit: 16 * 256 * 8,
                ..LIMITS
            },
            ..grow
        };
        assert_eq!(
            plan(&limited).layout,
            Some(Layout {
                rows: 2,
                capacity: 512
            }),
            "only what is needed when the merged buffer would pass the limit"
        );
        let few = running(&[20; 4]);
        let thinned = State {
            layout: Some(current),
            ..state(&few, &[])
        };
        assert_eq!(
            plan(&thinned).layout,
            Some(Layout {
                rows: 4,
                capacity: 256
            })
        );
        // A long buffer and a short batch: it would shrink, unless others wait.
        let long = Layout {
            rows: 8,
            capacity: 2048,
        };
        let queue = waiting(&[10]);
        let with_queue = State {
            layout: Some(long),
            queued: 3,
            ..state(&few, &queue)
        };
        assert_eq!(plan(&with_queue).layout, None, "kept while others wait");
        let last_one = State {
            queued: 1,
            ..with_queue
        };
        assert_eq!(
            plan(&last_one).layout,
            Some(Layout {
                rows: 8,
                capacity: 256
            })
        );
    }
}
