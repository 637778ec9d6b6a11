//! What the chat and completions routes share of OpenAI's request and response shapes:
//! the sampling fields every generation body carries (declared once, in
//! [`generation_body!`]), `stop` and `stream_options`, token usage, finish reasons, ids
//! and timestamps, and the one check of a body's generation fields.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use slough_protocol::{
    bounds::Field,
    inference::{FinishReason, GenerateRequest, Usage},
};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Declares an OpenAI generation request body: the fields written in the invocation,
/// then the sampling fields every generation body shares, declared here once
/// (`temperature`, `top_p`, the penalties, `seed`, and the extensions `top_k`, `min_p`,
/// `repetition_penalty`), and a `sampling()` method that reads them as the protocol's
/// [`SamplingParams`]. A macro rather than a flattened struct, because serde cannot
/// combine `flatten` with `deny_unknown_fields`, and a body must refuse a field it does
/// not know by name.
///
/// [`SamplingParams`]: slough_protocol::inference::SamplingParams
macro_rules! generation_body {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($fields)*
            /// 0 to 2; 0 always picks the most likely token.
            #[serde(default)]
            pub temperature: Option<f32>,
            /// Nucleus sampling, above 0 and at most 1.
            #[serde(default)]
            pub top_p: Option<f32>,
            /// The same seed and request give the same answer.
            #[serde(default)]
            pub seed: Option<i64>,
            /// −2 to 2, subtracted once from the logit of each token already generated.
            #[serde(default)]
            pub presence_penalty: Option<f32>,
            /// −2 to 2, times how often each token has been generated.
            #[serde(default)]
            pub frequency_penalty: Option<f32>,
            /// Extension: keep only the k most likely tokens (0: off).
            #[serde(default)]
            pub top_k: Option<u32>,
            /// Extension: drop tokens less likely than this fraction of the most likely one.
            #[serde(default)]
            pub min_p: Option<f32>,
            /// Extension: above 1 discourages repeating tokens already seen.
            #[serde(default)]
            pub repetition_penalty: Option<f32>,
        }

        impl $name {
            /// The sampling fields as the protocol's parameters.
            pub fn sampling(&self) -> slough_protocol::inference::SamplingParams {
                slough_protocol::inference::SamplingParams {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    seed: self.seed.map(|seed| seed.cast_unsigned()),
                }
            }
        }
    };
}
pub(crate) use generation_body;

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for TokenUsage {
    fn from(usage: Usage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token or one of the `stop` sequences.
    Stop,
    /// `max_tokens` or the end of the model's context.
    Length,
}

impl From<FinishReason> for Finish {
    fn from(reason: FinishReason) -> Finish {
        match reason {
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => Finish::Length,
        }
    }
}

/// `stop`: one string or a list of at most four, none empty.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_list(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(one)) => vec![one],
            Some(Stop::Many(many)) => many,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]`, with no choices and the request's usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stream_options` only goes with `stream: true`.
pub fn check_stream_options(
    stream: Option<bool>,
    options: Option<&StreamOptions>,
) -> Result<(), ApiError> {
    if options.is_some() && stream != Some(true) {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    Ok(())
}

/// Checks a route's generation with the protocol's one validation, naming the field as
/// the route's request calls it (`max_tokens_param`: `max_tokens` or
/// `max_completion_tokens`).
pub fn validate(request: &GenerateRequest, max_tokens_param: &str) -> Result<(), ApiError> {
    request.validate().map_err(|invalid| {
        if invalid.field == Field::MaxTokens {
            let message = invalid.message.replacen("max_tokens", max_tokens_param, 1);
            ApiError::invalid(max_tokens_param, message)
        } else {
            ApiError::invalid(invalid.field.api_name(), invalid.message)
        }
    })
}

/// The most characters an end-user id may have.
pub const MAX_END_USER: usize = 256;

/// The end user a request names, kept with its usage and stored completion so that
/// their data can be exported or erased: `safety_identifier`, or the older `user`.
pub fn end_user(
    safety_identifier: Option<&str>,
    user: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let (param, id) = match (safety_identifier, user) {
        (Some(id), _) => ("safety_identifier", id),
        (None, Some(id)) => ("user", id),
        (None, None) => return Ok(None),
    };
    let length = id.chars().count();
    if length == 0 || length > MAX_END_USER {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must have 1 to {MAX_END_USER} characters, it has {length}"),
        ));
    }
    Ok(Some(id.to_owned()))
}

/// A second count since the epoch, for `created`.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A fresh response id, e.g. `chatcmpl-…`.
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
