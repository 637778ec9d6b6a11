//! `POST /v1/pii/analyze` and `POST /v1/pii/anonymize`: where a text's personal data
//! is, and the text without it, in the shapes of Presidio's analyzer and anonymizer.
//! Computed here by `slough-pii` (no other service is asked), for any key.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, post, web};
use serde::{Deserialize, Serialize};
use slough_pii::{Finding, Operator, PiiType, Replaced};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    http::{Caller, JsonBody},
};

/// A text to look through.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    pub text: String,
    /// The types to look for; every type when left out or empty.
    #[serde(default)]
    pub types: Vec<PiiType>,
}

/// The personal data found, in order of where it starts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyzeResponse {
    /// Always `pii.analysis`.
    pub object: String,
    pub findings: Vec<Finding>,
}

/// A text to anonymize, and how.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymizeRequest {
    pub text: String,
    /// The types to anonymize; every type when left out or empty.
    #[serde(default)]
    pub types: Vec<PiiType>,
    /// What replaces each type's findings (`replace`: `<EMAIL_ADDRESS>`, `redact`:
    /// nothing, `hash`: the SHA-256 of the finding in hex); `replace` for a type not
    /// named.
    #[serde(default)]
    pub operators: BTreeMap<PiiType, Operator>,
}

/// The text with its personal data replaced, and each replacement.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnonymizeResponse {
    /// Always `pii.anonymization`.
    pub object: String,
    pub text: String,
    /// Where each replacement stands in `text`, in characters.
    pub items: Vec<Replaced>,
}

/// Finds personal data in a text: e-mail addresses, phone numbers, payment card
/// numbers (Luhn), IBANs (checksum), IP addresses, US social security numbers and
/// secrets (API keys, private keys, tokens). Offsets are in characters.
#[utoipa::path(
    tag = "PII",
    request_body = AnalyzeRequest,
    responses((status = 200, description = "Where the personal data is", body = AnalyzeResponse)),
    security(("api_key" = [])),
)]
#[post("/v1/pii/analyze")]
pub async fn analyze(
    Caller(_caller): Caller,
    JsonBody(body): JsonBody<AnalyzeRequest>,
) -> Result<HttpResponse, ApiError> {
    let findings = off_the_runtime(move || slough_pii::analyze(&body.text, &body.types)).await?;
    Ok(HttpResponse::Ok().json(AnalyzeResponse {
        object: "pii.analysis".to_owned(),
        findings,
    }))
}

/// Replaces the personal data in a text by typed placeholders, nothing, or hashes,
/// per type.
#[utoipa::path(
    tag = "PII",
    request_body = AnonymizeRequest,
    responses((status = 200, description = "The anonymized text", body = AnonymizeResponse)),
    security(("api_key" = [])),
)]
#[post("/v1/pii/anonymize")]
pub async fn anonymize(
    Caller(_caller): Caller,
    JsonBody(body): JsonBody<AnonymizeRequest>,
) -> Result<HttpResponse, ApiError> {
    let (text, items) = off_the_runtime(move || {
        let findings = slough_pii::analyze(&body.text, &body.types);
        slough_pii::anonymize(&body.text, &findings, &body.operators)
    })
    .await?;
    Ok(HttpResponse::Ok().json(AnonymizeResponse {
        object: "pii.anonymization".to_owned(),
        text,
        items,
    }))
}

/// Runs `work` on a blocking thread: a body of megabytes takes a while to scan.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work)
        .await
        .map_err(|err| ApiError::internal("the PII scan stopped", err))
}
