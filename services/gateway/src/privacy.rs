//! A key's PII policy applied to what a request sends to a model: chat messages,
//! completion prompts, embedding inputs. `mask` replaces each finding in place by its
//! type (`<EMAIL_ADDRESS>`), so neither the model nor a stored completion sees it;
//! `block` refuses the request with 400 `pii_detected`, naming the first text that holds
//! personal data and the types found there. Findings are counted by type and action in
//! `slough_gateway_pii_findings_total`; the texts themselves are never logged. Prompts
//! given as token ids are not read.

use std::collections::{BTreeMap, BTreeSet};

use slough_pii::PiiType;

use crate::{error::ApiError, keys::PiiPolicy, metrics::Metrics};

/// Applies `policy` to each text, named by its request field (`messages[2].content`).
pub fn screen<'a>(
    policy: PiiPolicy,
    metrics: &Metrics,
    texts: impl IntoIterator<Item = (String, &'a mut String)>,
) -> Result<(), ApiError> {
    if policy == PiiPolicy::Off {
        return Ok(());
    }
    let mut masked: BTreeMap<PiiType, u64> = BTreeMap::new();
    for (param, text) in texts {
        let findings = slough_pii::analyze(text, &[]);
        if findings.is_empty() {
            continue;
        }
        if policy == PiiPolicy::Block {
            let types: BTreeSet<PiiType> = findings.iter().map(|f| f.kind).collect();
            for kind in &types {
                let count = findings.iter().filter(|f| f.kind == *kind).count();
                metrics.pii_found(kind.name(), "blocked", count as u64);
            }
            let names: Vec<&str> = types.iter().map(|kind| kind.name()).collect();
            let message = format!(
                "{param} holds personal data ({}), and this key's PII policy blocks it",
                names.join(", ")
            );
            return Err(ApiError::pii_detected(param, message));
        }
        for finding in &findings {
            *masked.entry(finding.kind).or_default() += 1;
        }
        // No operators named: every type is replaced by `<TYPE>`.
        let (anonymized, _) = slough_pii::anonymize(text, &findings, &BTreeMap::new());
        *text = anonymized;
    }
    for (kind, count) in masked {
        metrics.pii_found(kind.name(), "masked", count);
    }
    Ok(())
}
