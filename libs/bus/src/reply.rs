//! Answering a request: a payload, or an error reply carrying its code, retry hint and
//! field in headers. Shared by request/reply endpoints and streams' acknowledgements.

use async_nats::HeaderMap;
use slough_protocol::ErrorBody;

use crate::{ERROR_CODE_HEADER, PARAM_HEADER, RETRY_AFTER_HEADER};

/// Answers a request with a payload or an error; a failed publish is only logged
/// because the caller is gone.
pub(crate) async fn respond(
    request: &async_nats::service::Request,
    result: Result<Vec<u8>, ErrorBody>,
) {
    let outcome = match result {
        Ok(payload) => request.respond(Ok(payload.into())).await,
        Err(error) => {
            let mut headers = HeaderMap::new();
            headers.insert(ERROR_CODE_HEADER, error.code.as_str());
            if let Some(ms) = error.retry_after_ms {
                headers.insert(RETRY_AFTER_HEADER, ms.to_string().as_str());
            }
            if let Some(param) = &error.param {
                headers.insert(PARAM_HEADER, param.as_str());
            }
            let status = error.message.replace(['\r', '\n'], " ");
            let nats_error = async_nats::service::error::Error {
                status,
                code: usize::from(error.code.numeric()),
            };
            request.respond_with_headers(Err(nats_error), headers).await
        }
    };
    if let Err(err) = outcome {
        tracing::warn!(error = %err, "could not send a reply");
    }
}
