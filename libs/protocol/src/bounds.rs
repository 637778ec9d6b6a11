//! The allowed values of a generation's fields, in one table. Whoever receives a
//! [`GenerateRequest`] checks it with [`GenerateRequest::validate`] (the gateway before
//! anything reaches the bus, inference again for callers on the bus), and the gateway's
//! OpenAPI document takes its bounds from [`Field::bounds`], so the three cannot drift.

use std::fmt;

use crate::{
    ErrorBody,
    inference::{GenerateRequest, SamplingParams},
};

/// Most stop sequences per request (as OpenAI).
pub const MAX_STOP: usize = 4;

/// A field of a generation with a rule on its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Temperature,
    TopP,
    MinP,
    RepetitionPenalty,
    PresencePenalty,
    FrequencyPenalty,
    N,
    MaxTokens,
    TopLogprobs,
    Stop,
}

/// A numeric range: `min` (inclusive unless `min_exclusive`) up to `max` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min: f64,
    pub min_exclusive: bool,
    pub max: Option<f64>,
}

impl Field {
    /// Every field with numeric bounds, in the order they are checked.
    pub const NUMERIC: [Field; 9] = [
        Field::Temperature,
        Field::TopP,
        Field::MinP,
        Field::RepetitionPenalty,
        Field::PresencePenalty,
        Field::FrequencyPenalty,
        Field::N,
        Field::MaxTokens,
        Field::TopLogprobs,
    ];

    /// Its name in OpenAI's API (`temperature`).
    pub fn api_name(self) -> &'static str {
        match self {
            Field::Temperature => "temperature",
            Field::TopP => "top_p",
            Field::MinP => "min_p",
            Field::RepetitionPenalty => "repetition_penalty",
            Field::PresencePenalty => "presence_penalty",
            Field::FrequencyPenalty => "frequency_penalty",
            Field::N => "n",
            Field::MaxTokens => "max_tokens",
            Field::TopLogprobs => "top_logprobs",
            Field::Stop => "stop",
        }
    }

    /// Its path in a [`GenerateRequest`] (`sampling.temperature`).
    pub fn wire_name(self) -> &'static str {
        match self {
            Field::Temperature => "sampling.temperature",
            Field::TopP => "sampling.top_p",
            Field::MinP => "sampling.min_p",
            Field::RepetitionPenalty => "sampling.repetition_penalty",
            Field::PresencePenalty => "sampling.presence_penalty",
            Field::FrequencyPenalty => "sampling.frequency_penalty",
            other => other.api_name(),
        }
    }

    /// The values it may take (a stop list's rule is on its length, [`MAX_STOP`]).
    pub fn bounds(self) -> Bounds {
        let range = |min: f64, max: f64| Bounds {
            min,
            min_exclusive: false,
            max: Some(max),
        };
        match self {
            Field::Temperature => range(0.0, 2.0),
            Field::TopP => Bounds {
                min_exclusive: true,
                ..range(0.0, 1.0)
            },
            Field::MinP => range(0.0, 1.0),
            Field::RepetitionPenalty => range(0.01, 10.0),
            Field::PresencePenalty | Field::FrequencyPenalty => range(-2.0, 2.0),
            Field::N => range(1.0, 16.0),
            Field::MaxTokens => Bounds {
                min: 1.0,
                min_exclusive: false,
                max: None,
            },
            Field::TopLogprobs => range(0.0, 20.0),
            Field::Stop => range(0.0, MAX_STOP as f64),
        }
    }

    /// Checks `value` against [`Field::bounds`].
    pub fn check(self, value: f64) -> Result<(), Invalid> {
        self.check_as(value, |bound| bound, value.to_string())
    }

    /// Checks an `f32` against [`Field::bounds`] rounded to `f32` as well, so that a
    /// bound such as 0.01 admits the `f32` nearest to it.
    pub fn check_f32(self, value: f32) -> Result<(), Invalid> {
        let rounded = |bound: f64| f64::from(bound as f32);
        self.check_as(f64::from(value), rounded, value.to_string())
    }

    fn check_as(
        self,
        value: f64,
        round: impl Fn(f64) -> f64,
        shown: String,
    ) -> Result<(), Invalid> {
        let Bounds {
            min,
            min_exclusive,
            max,
        } = self.bounds();
        let above_min = if min_exclusive {
            value > round(min)
        } else {
            value >= round(min)
        };
        if above_min && max.is_none_or(|max| value <= round(max)) {
            return Ok(());
        }
        let name = self.api_name();
        let rule = match (min_exclusive, max) {
            (false, Some(max)) => format!("between {min} and {max}"),
            (true, Some(max)) => format!("above {min} and at most {max}"),
            (_, None) => format!("at least {min}"),
        };
        Err(Invalid {
            field: self,
            message: format!("{name} must be {rule}, got {shown}"),
        })
    }
}

/// A field whose value breaks its rule; the message names it by its API name.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: Field,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

/// On the bus an invalid field is `invalid_request` naming its path in the request.
impl From<Invalid> for ErrorBody {
    fn from(invalid: Invalid) -> ErrorBody {
        ErrorBody::invalid(invalid.field.wire_name(), invalid.message)
    }
}

impl SamplingParams {
    /// Checks every sampling field against its rule, naming the first that breaks one.
    pub fn validate(&self) -> Result<(), Invalid> {
        let floats = [
            (Field::Temperature, self.temperature),
            (Field::TopP, self.top_p),
            (Field::MinP, self.min_p),
            (Field::RepetitionPenalty, self.repetition_penalty),
            (Field::PresencePenalty, self.presence_penalty),
            (Field::FrequencyPenalty, self.frequency_penalty),
        ];
        for (field, value) in floats {
            if let Some(value) = value {
                field.check_f32(value)?;
            }
        }
        Ok(())
    }
}

impl GenerateRequest {
    /// Checks every field against its rule, naming the first that breaks one.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.sampling.validate()?;
        Field::N.check(f64::from(self.n))?;
        if let Some(max_tokens) = self.max_tokens {
            Field::MaxTokens.check(f64::from(max_tokens))?;
        }
        Field::TopLogprobs.check(f64::from(self.top_logprobs))?;
        if self.top_logprobs > 0 && !self.logprobs {
            return Err(Invalid {
                field: Field::TopLogprobs,
                message: "top_logprobs needs logprobs set to true".to_owned(),
            });
        }
        if self.stop.len() > MAX_STOP {
            return Err(Invalid {
                field: Field::Stop,
                message: format!(
                    "stop takes at most {MAX_STOP} sequences, got {}",
                    self.stop.len()
                ),
            });
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Invalid {
                field: Field::Stop,
                message: "stop sequences must not be empty".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::PromptInput;

    fn request() -> GenerateRequest {
        GenerateRequest::new("m", PromptInput::Text("hi".to_owned()))
    }

    #[test]
    fn each_field_out_of_range_is_named() {
        type Spoil = fn(&mut GenerateRequest);
        let cases: [(Spoil, Field); 12] = [
            (|r| r.sampling.temperature = Some(2.5), Field::Temperature),
            (
                |r| r.sampling.temperature = Some(f32::NAN),
                Field::Temperature,
            ),
            (|r| r.sampling.top_p = Some(0.0), Field::TopP),
            (|r| r.sampling.min_p = Some(1.5), Field::MinP),
            (
                |r| r.sampling.repetition_penalty = Some(0.005),
                Field::RepetitionPenalty,
            ),
            (
                |r| r.sampling.presence_penalty = Some(-3.0),
                Field::PresencePenalty,
            ),
            (
                |r| r.sampling.frequency_penalty = Some(2.1),
                Field::FrequencyPenalty,
            ),
            (|r| r.n = 0, Field::N),
            (|r| r.n = 17, Field::N),
            (|r| r.max_tokens = Some(0), Field::MaxTokens),
            (|r| r.top_logprobs = 2, Field::TopLogprobs),
            (|r| r.stop = vec![String::new()], Field::Stop),
        ];
        for (spoil, field) in cases {
            let mut spoiled = request();
            spoil(&mut spoiled);
            let invalid = spoiled.validate().unwrap_err();
            assert_eq!(invalid.field, field, "{invalid}");
            assert!(invalid.message.starts_with(field.api_name()), "{invalid}");
            let body = ErrorBody::from(invalid);
            assert_eq!(body.param.as_deref(), Some(field.wire_name()));
        }
    }

    #[test]
    fn edges_are_allowed() {
        let mut edge = request();
        edge.sampling.temperature = Some(2.0);
        edge.sampling.top_p = Some(1.0);
        edge.sampling.repetition_penalty = Some(0.01);
        edge.n = 16;
        edge.max_tokens = Some(1);
        edge.logprobs = true;
        edge.top_logprobs = 20;
        edge.stop = vec!["a".to_owned(); MAX_STOP];
        assert_eq!(edge.validate(), Ok(()));
        assert_eq!(
            Field::TopP.check(0.0).unwrap_err().message,
            "top_p must be above 0 and at most 1, got 0"
        );
        assert_eq!(
            Field::MaxTokens.check(0.0).unwrap_err().message,
            "max_tokens must be at least 1, got 0"
        );
    }
}
