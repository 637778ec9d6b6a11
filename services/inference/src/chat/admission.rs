//! Which waiting requests join the running batch on this turn, and whether their
//! prompts are prefilled in one call: a pure function of plain numbers, so the policy is
//! tested without a model.
//!
//! The rules: requests are taken in arrival order; the first one always goes when its
//! choices fit the batch (a long prompt is never starved by the budget); more follow
//! while their prompts fit the prefill budget and their choices the batch, so a burst
//! starts together without stalling the running streams for long. The admitted prompts
//! are prefilled together (right-padded) unless padding would more than double the work.

/// A waiting request as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub prompt_tokens: usize,
    /// Choices it asks for: sequences it will take in the batch.
    pub choices: usize,
}

/// What to do on this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// How many requests to take from the front of the queue.
    pub count: usize,
    /// Sequences in the batch once they are in.
    pub sequences: usize,
    /// The longest admitted prompt.
    pub longest_prompt: usize,
    /// Prefill their prompts in one call rather than one by one.
    pub together: bool,
}

/// Decides the turn for `waiting` (in arrival order) with `running` sequences in a batch
/// of at most `max_batch`, prefilling at most `prefill_budget` prompt tokens beyond the
/// first request.
pub fn admit(
    waiting: impl IntoIterator<Item = Waiting>,
    running: usize,
    max_batch: usize,
    prefill_budget: usize,
) -> Admission {
    let (mut count, mut spent, mut sequences, mut longest) = (0, 0, running, 0);
    for request in waiting {
        let over_budget = count > 0 && spent + request.prompt_tokens > prefill_budget;
        if over_budget || sequences + request.choices > max_batch {
            break;
        }
        count += 1;
        spent += request.prompt_tokens;
        sequences += request.choices;
        longest = longest.max(request.prompt_tokens);
    }
    Admission {
        count,
        sequences,
        longest_prompt: longest,
        together: count * longest <= 2 * spent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(prompts: &[usize]) -> Vec<Waiting> {
        prompts
            .iter()
            .map(|&prompt_tokens| Waiting {
                prompt_tokens,
                choices: 1,
            })
            .collect()
    }

    #[test]
    fn the_first_request_goes_even_over_the_budget() {
        let turn = admit(requests(&[2000, 10]), 0, 16, 256);
        assert_eq!(turn.count, 1);
        assert_eq!(turn.longest_prompt, 2000);
        assert!(turn.together);
    }

    #[test]
    fn a_burst_goes_together_within_the_budget() {
        let turn = admit(requests(&[60; 10]), 0, 16, 256);
        // Four prompts make 240 tokens; a fifth would make 300, over the budget.
        assert_eq!(turn.count, 4);
        assert_eq!(turn.sequences, 4);
        assert!(turn.together, "equal prompts pad nothing");
    }

    #[test]
    fn the_batch_bounds_the_sequences() {
        let turn = admit(requests(&[5; 10]), 14, 16, 256);
        assert_eq!((turn.count, turn.sequences), (2, 16));
        let full = admit(requests(&[5]), 16, 16, 256);
        assert_eq!(full.count, 0);
        let wide = [Waiting {
            prompt_tokens: 5,
            choices: 4,
        }];
        assert_eq!(
            admit(wide, 13, 16, 256).count,
            0,
            "its 4 choices do not fit"
        );
    }

    #[test]
    fn prompts_of_very_different_lengths_are_prefilled_apart() {
        // 200 + 4 + 4 + 4 tokens, padded to 4 × 200 = 800 > 2 × 212.
        let turn = admit(requests(&[200, 4, 4, 4]), 0, 16, 256);
        assert_eq!(turn.count, 4);
        assert!(!turn.together);
        let close = admit(requests(&[50, 40, 60]), 0, 16, 256);
        assert!(close.together);
    }

    #[test]
    fn nothing_waiting_admits_nothing() {
        assert_eq!(admit(Vec::new(), 3, 16, 256).count, 0);
    }
}
