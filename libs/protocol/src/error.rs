//! Stable error codes. Every failure that crosses the bus carries one of these; the
//! gateway maps each to an HTTP status in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. New variants may be added; existing ones are
/// never renamed (clients match on the string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range; the message names the field.
    InvalidRequest,
    /// The thing asked for does not exist.
    NotFound,
    /// The model asked for is not served.
    ModelNotFound,
    /// The request clashes with what is stored: the id is taken, or the thing may not
    /// be changed (a built-in persona).
    Conflict,
    /// A message is larger than the bus carries (NATS's `max_payload`); the message names
    /// both sizes.
    PayloadTooLarge,
    /// The prompt plus the requested completion does not fit the model's context.
    ContextLengthExceeded,
    /// The service is at capacity; retry after the hinted delay.
    Overloaded,
    /// A dependency of the service (store, JetStream, a model) is not available.
    Unavailable,
    /// The operation took longer than allowed.
    Timeout,
    /// The operation was cancelled by its requester.
    Cancelled,
    /// A bug or an unexpected failure inside the service.
    Internal,
}

impl ErrorCode {
    /// The code as it travels (`overloaded`, `model_not_found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
        }
    }

    /// Parses a code as written by [`ErrorCode::as_str`].
    pub fn parse(code: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(code.to_owned())).ok()
    }

    /// The numeric code sent in the `Nats-Service-Error-Code` header, so that generic
    /// NATS tooling (`nats micro`) shows a meaningful number. HTTP-like by convention;
    /// the gateway does its own, exhaustive mapping.
    pub fn numeric(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::NotFound | ErrorCode::ModelNotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ContextLengthExceeded => 422,
            ErrorCode::Overloaded => 429,
            ErrorCode::Cancelled => 499,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels inside a message body (stream chunks carry errors this way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable message naming the problem.
    pub message: String,
    /// For `overloaded`: how long the caller should wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `invalid_request`: the request field at fault (`inputs[3]`,
    /// `sampling.temperature`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message, no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            retry_after_ms: None,
            param: None,
        }
    }

    /// `overloaded`, to be retried after `retry_after_ms`.
    pub fn overloaded(message: impl Into<String>, retry_after_ms: u64) -> ErrorBody {
        ErrorBody {
            retry_after_ms: Some(retry_after_ms),
            ..ErrorBody::new(ErrorCode::Overloaded, message)
        }
    }

    /// `invalid_request` naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            param: Some(param.into()),
            ..ErrorBody::new(ErrorCode::InvalidRequest, message)
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_strings() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::NotFound,
            ErrorCode::ModelNotFound,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::ContextLengthExceeded,
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
            ErrorCode::Cancelled,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert_eq!(ErrorCode::parse("bogus"), None);
    }
}
