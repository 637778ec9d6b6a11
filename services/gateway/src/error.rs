//! Errors as OpenAI clients expect them: `{"error": {message, type, param, code}}` with
//! the matching HTTP status. The one mapping from protocol error codes to HTTP lives
//! here ([`ApiError::from_bus`]).

use std::{fmt, time::Duration};

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;
use slough_bus::BusError;
use slough_protocol::ErrorCode;
use utoipa::ToSchema;

use crate::{
    keys::KeyError,
    limits::LimitError,
    pipeline::{PipelineError, Step},
};

/// An error answer. Build it with the constructors, which pick the status and type.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorObject,
    retry_after: Option<Duration>,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

/// What went wrong, in OpenAI's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Says what is wrong, naming the field when one is at fault.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `insufficient_quota`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A stable code (`invalid_api_key`, `model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorObject {
                message: message.into(),
                kind: kind.to_owned(),
                param: None,
                code: Some(code.to_owned()),
            },
            retry_after: None,
        }
    }

    /// 400: a field is missing, has the wrong type or is out of range.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            message,
        );
        error.body.param = Some(param.into());
        error
    }

    /// 400: the body is not JSON at all.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            message,
        )
    }

    /// 401: no key, or a key that is not valid.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            message,
        )
    }

    /// 403: the key lacks a scope or may not use the model.
    pub fn forbidden(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", code, message)
    }

    /// 404: an unknown model, key or route.
    pub fn not_found(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found_error", code, message)
    }

    /// 405: the route exists with other methods.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            message,
        )
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than the gateway's limit of {limit} bytes"),
        )
    }

    /// 413 naming `param`: what the request holds is over a limit `message` names.
    pub fn over_limit(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            message,
        )
        .with_param(param)
    }

    /// 400 naming `param`: it holds personal data, and the key's PII policy blocks it.
    pub fn pii_detected(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "pii_detected",
            message,
        )
        .with_param(param)
    }

    /// 413 naming `param`: storing the request would pass a storage quota.
    pub fn quota_reached(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "storage_quota_exceeded",
            message,
        )
        .with_param(param)
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout(timeout: Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "the request body did not arrive within {} s (gateway.body_timeout_s)",
                timeout.as_secs()
            ),
        )
    }

    /// 429: a rate limit or capacity was reached; retry after `retry_after`.
    pub fn rate_limited(code: &str, message: impl Into<String>, retry_after: Duration) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            code,
            message,
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 503 with a retry hint: a dependency (the bus) is down for now.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "unavailable",
            message,
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 429 without a retry hint: the key's token budget is spent.
    pub fn quota_exceeded(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            message,
        )
    }

    /// 499 (nginx's "client closed request"): the client left before the answer was
    /// ready. Nobody reads it; it marks the request in logs and usage.
    pub fn client_gone() -> ApiError {
        ApiError::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::REQUEST_TIMEOUT),
            "invalid_request_error",
            "client_closed_request",
            "the client closed the connection before the answer was ready",
        )
    }

    /// 500: a bug or an unexpected failure; the details go to the log, not the client.
    /// A store error: 503 (try again shortly) when the database cannot be reached now,
    /// else 500.
    pub fn store(context: &str, error: &sea_orm::DbErr) -> ApiError {
        if slough_store::is_unavailable(error) {
            tracing::warn!(error = %error, "{context}: the store is unavailable");
            return ApiError::unavailable(
                format!("{context}: the database cannot be reached; try again shortly"),
                std::time::Duration::from_secs(5),
            );
        }
        ApiError::internal(context, error)
    }

    pub fn internal(context: &str, error: impl fmt::Display) -> ApiError {
        tracing::error!(error = %error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            format!("{context}; the gateway's log has the details"),
        )
    }

    /// The error a failed bus call stands for. Every protocol code has its status here.
    pub fn from_bus(error: &BusError) -> ApiError {
        let body = error.to_body();
        let (status, kind) = match body.code {
            ErrorCode::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorCode::NotFound | ErrorCode::ModelNotFound => {
                (StatusCode::NOT_FOUND, "not_found_error")
            }
            ErrorCode::Conflict => (StatusCode::CONFLICT, "invalid_request_error"),
            ErrorCode::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            ErrorCode::ContextLengthExceeded => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error")
            }
            ErrorCode::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, "server_error"),
            // Only the caller cancels, and then nobody reads the answer.
            ErrorCode::Cancelled => (StatusCode::REQUEST_TIMEOUT, "server_error"),
            ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        };
        let mut api = ApiError::new(status, kind, body.code.as_str(), body.message);
        api.body.param = body.param;
        if body.code == ErrorCode::Overloaded {
            let hint = Duration::from_millis(body.retry_after_ms.unwrap_or(1000));
            api.retry_after = Some(hint);
        }
        if status.is_server_error() {
            tracing::warn!(error = %error, "upstream failure");
        }
        api
    }

    /// Adds `suffix` to the message (what had been done before the failure).
    pub fn with_message_suffix(mut self, suffix: &str) -> ApiError {
        self.body.message.push_str(suffix);
        self
    }

    /// Names the field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.body.param = Some(param.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's `error` object.
    pub fn object(&self) -> &ErrorObject {
        &self.body
    }
}

/// The status of each way an API key can fail.
impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> ApiError {
        let message = error.to_string();
        match error {
            KeyError::Missing | KeyError::Malformed | KeyError::Unknown | KeyError::Revoked => {
                ApiError::unauthorized(message)
            }
            KeyError::MissingScope(_) => ApiError::forbidden("missing_scope", message),
            KeyError::ModelNotAllowed(_) => {
                ApiError::forbidden("model_not_allowed", message).with_param("model")
            }
            KeyError::NotFound(_) => ApiError::not_found("key_not_found", message),
            KeyError::Invalid { param, message } => ApiError::invalid(param, message),
            KeyError::Store { source, .. } => ApiError::store("cannot check the API key", &source),
            KeyError::AdminKey(_) | KeyError::AdminKeyFile { .. } => {
                ApiError::internal("cannot use the API keys", message)
            }
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(error: LimitError) -> ApiError {
        let message = error.to_string();
        match error {
            LimitError::Budget { .. } => ApiError::quota_exceeded(message),
            LimitError::TokensPerMinute { retry_after, .. } => {
                ApiError::rate_limited("tokens_per_minute", message, retry_after)
            }
            LimitError::RequestsPerMinute { retry_after, .. } => {
                ApiError::rate_limited("requests_per_minute", message, retry_after)
            }
            LimitError::Store(err) => ApiError::store("cannot read the key's usage", &err),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> ApiError {
        match error {
            PipelineError::Invalid { param, message } => ApiError::invalid(param, message),
            // Retrieval's fields are the request's `rag.*`.
            PipelineError::Step {
                step: Step::Retrieve,
                source,
            } => {
                let api = ApiError::from_bus(&source);
                match source.to_body().param {
                    Some(param) => api.with_param(format!("rag.{param}")),
                    None => api.with_param("rag.collection"),
                }
            }
            PipelineError::Step { source, .. } => ApiError::from_bus(&source),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> ApiError {
        ApiError::from_bus(&error)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.body.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(retry_after) = self.retry_after {
            // Whole seconds, rounded up, at least one (RFC 9110 has no fractions).
            let seconds = retry_after.as_millis().div_ceil(1000).max(1);
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(ErrorResponse {
            error: self.body.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slough_protocol::ErrorBody;

    #[test]
    fn every_protocol_code_has_a_status() {
        let cases = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::NotFound, 404),
            (ErrorCode::ModelNotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::ContextLengthExceeded, 422),
            (ErrorCode::Overloaded, 429),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Cancelled, 408),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in cases {
            let error = ApiError::from_bus(&BusError::Service(ErrorBody::new(code, "x")));
            assert_eq!(error.status().as_u16(), status, "{code}");
            assert_eq!(error.object().code.as_deref(), Some(code.as_str()));
        }
        let nobody = BusError::NoResponders {
            subject: "slough.v1.inference.generate".to_owned(),
        };
        assert_eq!(ApiError::from_bus(&nobody).status().as_u16(), 503);
    }

    #[test]
    fn overloaded_carries_retry_after_in_whole_seconds() {
        let mut body = ErrorBody::new(ErrorCode::Overloaded, "busy");
        body.retry_after_ms = Some(1200);
        let response = ApiError::from_bus(&BusError::Service(body)).error_response();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("Retry-After").unwrap(), "2");
    }
}
