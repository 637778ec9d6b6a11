//! A key's PII policy applied to what a request sends to a model: chat messages,
//! completion prompts, embedding inputs. `mask` replaces each finding in place by its
//! type (`<EMAIL_ADDRESS>`), so neither the model nor a stored completion sees it;
//! `block` refuses the request with 400 `pii_detected`, naming the first text that holds
//! personal data and the types found there. Findings are counted by type and action in
//! `slough_gateway_pii_findings_total` and, masked ones, in the request's usage row
//! (`pii_masked`); the texts themselves are never logged. Prompts
//! given as token ids are not read.
//!
//! A file can be scanned too ([`scan_lines`]): counts by type and by line.

use std::collections::BTreeMap;

use serde::Serialize;
use slough_pii::PiiType;
use utoipa::ToSchema;

use crate::{error::ApiError, keys::PiiPolicy, metrics::Metrics};

/// Applies `policy` to each text, named by its request field (`messages[2]`); answers
/// how many findings of each type it masked (for the request's usage row).
pub fn screen<'a>(
    policy: PiiPolicy,
    metrics: &Metrics,
    texts: impl IntoIterator<Item = (String, &'a mut String)>,
) -> Result<BTreeMap<PiiType, u64>, ApiError> {
    let mut masked: BTreeMap<PiiType, u64> = BTreeMap::new();
    if policy == PiiPolicy::Off {
        return Ok(masked);
    }
    for (param, text) in texts {
        let findings = slough_pii::analyze(text, &[]);
        if findings.is_empty() {
            continue;
        }
        let mut counts: BTreeMap<PiiType, u64> = BTreeMap::new();
        for finding in &findings {
            *counts.entry(finding.kind).or_default() += 1;
        }
        if policy == PiiPolicy::Block {
            for (kind, count) in &counts {
                metrics.pii_found(kind.name(), "blocked", *count);
            }
            let names: Vec<&str> = counts.keys().map(|kind| kind.name()).collect();
            let message = format!(
                "{param} holds personal data ({}), and this key's PII policy blocks it",
                names.join(", ")
            );
            return Err(ApiError::pii_detected(param, message));
        }
        for (kind, count) in counts {
            *masked.entry(kind).or_default() += count;
        }
        // No operators named: every type is replaced by `<TYPE>`.
        let (anonymized, _) = slough_pii::anonymize(text, &findings, &BTreeMap::new());
        *text = anonymized;
    }
    for (kind, count) in &masked {
        metrics.pii_found(kind.name(), "masked", *count);
    }
    Ok(masked)
}

/// `text` with every finding replaced by `<TYPE>`: what a deployment that masks stored
/// content (`gateway.mask_stored_pii`) keeps.
pub fn masked(text: &str) -> String {
    let findings = slough_pii::analyze(text, &[]);
    if findings.is_empty() {
        return text.to_owned();
    }
    slough_pii::anonymize(text, &findings, &BTreeMap::new()).0
}

/// Personal data in a file, counted by type and by line.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PiiScan {
    /// Findings of each type in the whole file.
    pub findings: BTreeMap<PiiType, u64>,
    /// How many lines hold any.
    pub lines_with_findings: u64,
    /// The first [`LISTED_LINES`] such lines (numbered from 1) with their counts.
    pub lines: Vec<LineFindings>,
}

/// One line's findings.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineFindings {
    pub line: u64,
    pub findings: BTreeMap<PiiType, u64>,
}

/// How many lines a scan lists one by one.
pub const LISTED_LINES: usize = 1000;

/// Scans each line of `text`: the strings of a JSON line (so escapes do not split a
/// finding), or the line as it is.
pub fn scan_lines(text: &str) -> PiiScan {
    let mut scan = PiiScan::default();
    for (index, line) in text.lines().enumerate() {
        let mut counts: BTreeMap<PiiType, u64> = BTreeMap::new();
        let mut count = |text: &str| {
            for finding in slough_pii::analyze(text, &[]) {
                *counts.entry(finding.kind).or_default() += 1;
            }
        };
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => each_string(&value, &mut count),
            Err(_) => count(line),
        }
        if counts.is_empty() {
            continue;
        }
        for (kind, n) in &counts {
            *scan.findings.entry(*kind).or_default() += n;
        }
        scan.lines_with_findings += 1;
        if scan.lines.len() < LISTED_LINES {
            scan.lines.push(LineFindings {
                line: index as u64 + 1,
                findings: counts,
            });
        }
    }
    scan
}

/// Calls `visit` on every string in `value`, keys excepted.
fn each_string(value: &serde_json::Value, visit: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::String(text) => visit(text),
        serde_json::Value::Array(items) => items.iter().for_each(|item| each_string(item, visit)),
        serde_json::Value::Object(fields) => {
            fields.values().for_each(|field| each_string(field, visit));
        }
        _ => {}
    }
}
