//! Composing a persona into a chat: the messages and sampling sent to inference.
//!
//! The rules:
//! - **System prompt.** The persona's rendered system prompt comes first. When the
//!   conversation starts with a system message of its own, the two are merged into
//!   that one message: the persona's prompt, a blank line, then the caller's text,
//!   which is never dropped or shortened (and, coming last, is what the model reads as
//!   the most specific instruction). Otherwise the persona's prompt becomes a new first
//!   message. Later system messages are left where they are.
//! - **Sampling.** Every parameter the request sets wins; the persona's default fills
//!   only the ones it leaves unset.

use slough_protocol::{
    inference::{ChatMessage, Role, SamplingParams},
    personality::Composed,
};

/// `messages` and `requested` sampling under a persona whose system prompt is
/// `system_prompt` and whose default sampling is `defaults`.
pub fn compose(
    persona: &str,
    system_prompt: &str,
    defaults: &SamplingParams,
    mut messages: Vec<ChatMessage>,
    requested: &SamplingParams,
) -> Composed {
    match messages.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content = format!("{system_prompt}\n\n{}", first.content);
        }
        _ => messages.insert(0, ChatMessage::new(Role::System, system_prompt)),
    }
    Composed {
        persona: persona.to_owned(),
        messages,
        sampling: SamplingParams {
            temperature: requested.temperature.or(defaults.temperature),
            top_p: requested.top_p.or(defaults.top_p),
            top_k: requested.top_k.or(defaults.top_k),
            min_p: requested.min_p.or(defaults.min_p),
            repetition_penalty: requested.repetition_penalty.or(defaults.repetition_penalty),
            presence_penalty: requested.presence_penalty.or(defaults.presence_penalty),
            frequency_penalty: requested.frequency_penalty.or(defaults.frequency_penalty),
            seed: requested.seed.or(defaults.seed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(text: &str) -> ChatMessage {
        ChatMessage::new(Role::System, text)
    }
    fn user(text: &str) -> ChatMessage {
        ChatMessage::new(Role::User, text)
    }
    fn assistant(text: &str) -> ChatMessage {
        ChatMessage::new(Role::Assistant, text)
    }

    #[test]
    fn system_messages_are_merged_never_replaced() {
        let cases = [
            (
                "no system message",
                vec![user("hi")],
                vec![system("P"), user("hi")],
            ),
            (
                "a leading system message",
                vec![system("Answer in French."), user("hi")],
                vec![system("P\n\nAnswer in French."), user("hi")],
            ),
            (
                "a system message later on",
                vec![
                    user("hi"),
                    assistant("hello"),
                    system("Be brief."),
                    user("why?"),
                ],
                vec![
                    system("P"),
                    user("hi"),
                    assistant("hello"),
                    system("Be brief."),
                    user("why?"),
                ],
            ),
            (
                "an empty leading system message",
                vec![system(""), user("hi")],
                vec![system("P\n\n"), user("hi")],
            ),
        ];
        let defaults = SamplingParams::default();
        for (case, messages, expected) in cases {
            let composed = compose("p", "P", &defaults, messages, &SamplingParams::default());
            assert_eq!(composed.messages, expected, "{case}");
        }
    }

    #[test]
    fn explicit_parameters_win_over_the_personas() {
        let defaults = SamplingParams {
            temperature: Some(0.9),
            top_p: Some(0.8),
            seed: Some(7),
            ..SamplingParams::default()
        };
        let cases = [
            (
                "nothing requested",
                SamplingParams::default(),
                defaults.clone(),
            ),
            (
                "temperature requested, even 0",
                SamplingParams {
                    temperature: Some(0.0),
                    ..SamplingParams::default()
                },
                SamplingParams {
                    temperature: Some(0.0),
                    ..defaults.clone()
                },
            ),
            (
                "a parameter the persona leaves unset",
                SamplingParams {
                    top_k: Some(40),
                    ..SamplingParams::default()
                },
                SamplingParams {
                    top_k: Some(40),
                    ..defaults.clone()
                },
            ),
            (
                "everything requested",
                SamplingParams {
                    temperature: Some(1.5),
                    top_p: Some(0.5),
                    seed: Some(1),
                    ..SamplingParams::default()
                },
                SamplingParams {
                    temperature: Some(1.5),
                    top_p: Some(0.5),
                    seed: Some(1),
                    ..SamplingParams::default()
                },
            ),
        ];
        for (case, requested, expected) in cases {
            let composed = compose("p", "P", &defaults, vec![user("hi")], &requested);
            assert_eq!(composed.sampling, expected, "{case}");
        }
    }
}
