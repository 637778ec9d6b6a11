//! What an API key is: its scopes and limits, the settings it is made or changed with,
//! and the rules those follow. Keys are `sk-` + a 12-character public prefix + a
//! 40-character secret; only the prefix (to find the row) and a SHA-256 of the whole
//! key are stored.

use chrono::{DateTime, Utc};
use rand::{Rng as _, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use slough_store::entities::api_key;
use utoipa::ToSchema;
use uuid::Uuid;

use super::KeyError;

/// The public part: `sk-` and 12 characters.
const PREFIX_LEN: usize = 15;
const SECRET_LEN: usize = 40;
/// The shortest key an operator may bring (`SLOUGH_ADMIN_KEY`).
pub(super) const MIN_KEY_LEN: usize = 32;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Manage keys and read every key's usage.
    Admin,
    /// Use models: chat, completions, embeddings, the model list.
    Inference,
    /// Change collections: create, delete, ingest and delete documents.
    Rag,
    /// Upload files and run fine-tuning jobs.
    #[serde(rename = "fine-tune")]
    FineTune,
}

impl Scope {
    /// The scope as written in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Inference => "inference",
            Scope::Rag => "rag",
            Scope::FineTune => "fine-tune",
        }
    }
}

/// What the gateway does with personal data (see `slough-pii`) in a key's requests:
/// the chat messages, completion prompts and embedding inputs it sends to a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PiiPolicy {
    /// Sent as it is.
    #[default]
    Off,
    /// Each finding replaced by its type (`<EMAIL_ADDRESS>`) before the model sees it,
    /// and before a stored completion keeps it.
    Mask,
    /// Refused with 400 `pii_detected`, naming the message and the types found.
    Block,
}

impl PiiPolicy {
    pub(super) fn column(self) -> Option<String> {
        match self {
            PiiPolicy::Off => None,
            PiiPolicy::Mask => Some("mask".to_owned()),
            PiiPolicy::Block => Some("block".to_owned()),
        }
    }

    fn from_column(column: Option<&str>) -> PiiPolicy {
        match column {
            Some("mask") => PiiPolicy::Mask,
            Some("block") => PiiPolicy::Block,
            _ => PiiPolicy::Off,
        }
    }
}

/// An API key as the gateway uses it (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The key's first characters, shown to tell keys apart.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// The models the key may use; `null` allows all.
    pub models: Option<Vec<String>>,
    /// Requests per minute; `null` is unlimited.
    pub requests_per_minute: Option<u32>,
    /// Prompt plus completion tokens per minute; `null` is unlimited.
    pub tokens_per_minute: Option<u32>,
    /// Tokens the key may use in all; `null` is unlimited.
    pub token_budget: Option<u64>,
    /// What happens to personal data in the key's requests.
    pub pii: PiiPolicy,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Refused unless the key has `scope`.
    /// Whether the key is an administrator's (sees every key's files and jobs).
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Whose files and jobs the key sees: its own, or everyone's (`None`) for an admin.
    pub fn owner_filter(&self) -> Option<String> {
        (!self.is_admin()).then(|| self.id.to_string())
    }

    pub fn require(&self, scope: Scope) -> Result<(), KeyError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(KeyError::MissingScope(scope))
        }
    }

    /// Refused unless the key may use `model`.
    pub fn allow_model(&self, model: &str) -> Result<(), KeyError> {
        match &self.models {
            Some(models) if !models.iter().any(|allowed| allowed == model) => {
                Err(KeyError::ModelNotAllowed(model.to_owned()))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn from_row(row: api_key::Model) -> ApiKey {
        let scopes = row
            .scopes
            .split_whitespace()
            .filter_map(|scope| match scope {
                "admin" => Some(Scope::Admin),
                "inference" => Some(Scope::Inference),
                "rag" => Some(Scope::Rag),
                "fine-tune" => Some(Scope::FineTune),
                _ => None,
            })
            .collect();
        ApiKey {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            scopes,
            models: row
                .allowed_models
                .map(|models| models.split_whitespace().map(str::to_owned).collect()),
            requests_per_minute: row.requests_per_minute.and_then(|n| u32::try_from(n).ok()),
            tokens_per_minute: row.tokens_per_minute.and_then(|n| u32::try_from(n).ok()),
            token_budget: row.token_budget.and_then(|n| u64::try_from(n).ok()),
            pii: PiiPolicy::from_column(row.pii_policy.as_deref()),
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// What a new key is given.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// A name to tell the key apart.
    pub name: String,
    /// Default: `["inference"]`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Default: `off`.
    #[serde(default)]
    pub pii: PiiPolicy,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference]
}

/// Changes to a key: a field left out stays as it is; `null` removes a limit.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub tokens_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub token_budget: Option<Option<u64>>,
    #[serde(default)]
    pub pii: Option<PiiPolicy>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A key as created: the secret appears here and nowhere else, ever.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The whole key; store it now, it cannot be shown again.
    pub secret: String,
    pub key: ApiKey,
}

/// A new secret: `sk-` and 52 random letters and digits.
pub(super) fn generate() -> String {
    let mut rng = rand::rng();
    let body: String = (0..PREFIX_LEN - 3 + SECRET_LEN)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect();
    format!("sk-{body}")
}

/// The stored prefix of a secret, when it has the shape of a key.
pub(super) fn prefix_of(secret: &str) -> Option<&str> {
    (secret.starts_with("sk-") && secret.len() >= MIN_KEY_LEN)
        .then(|| secret.get(..PREFIX_LEN))
        .flatten()
}

/// What is stored instead of the secret.
pub(super) fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl KeySettings {
    /// Checks every field, naming the first that breaks its rule.
    pub fn validate(&self) -> Result<(), KeyError> {
        validate_name(&self.name)?;
        validate_scopes(&self.scopes)?;
        if let Some(models) = &self.models {
            validate_models(models)?;
        }
        validate_limits(
            self.requests_per_minute,
            self.tokens_per_minute,
            self.token_budget,
        )
    }
}

impl KeyUpdate {
    /// Checks every field given, naming the first that breaks its rule.
    pub fn validate(&self) -> Result<(), KeyError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if let Some(scopes) = &self.scopes {
            validate_scopes(scopes)?;
        }
        if let Some(Some(models)) = &self.models {
            validate_models(models)?;
        }
        validate_limits(
            self.requests_per_minute.flatten(),
            self.tokens_per_minute.flatten(),
            self.token_budget.flatten(),
        )
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        param,
        message: message.into(),
    }
}

fn validate_name(name: &str) -> Result<(), KeyError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(invalid("name", "name must be 1 to 200 characters"));
    }
    Ok(())
}

fn validate_scopes(scopes: &[Scope]) -> Result<(), KeyError> {
    if scopes.is_empty() {
        return Err(invalid(
            "scopes",
            "scopes must name at least one of `admin`, `inference`, `rag`, `fine-tune`",
        ));
    }
    Ok(())
}

fn validate_models(models: &[String]) -> Result<(), KeyError> {
    if let Some(bad) = models
        .iter()
        .find(|model| model.is_empty() || model.chars().any(char::is_whitespace))
    {
        return Err(invalid(
            "models",
            format!("model id {bad:?} is empty or contains white space"),
        ));
    }
    Ok(())
}

fn validate_limits(
    rpm: Option<u32>,
    tpm: Option<u32>,
    budget: Option<u64>,
) -> Result<(), KeyError> {
    // What the store's columns hold.
    let int = i32::MAX as u64;
    let bigint = i64::MAX as u64;
    for (param, value, max) in [
        ("requests_per_minute", rpm.map(u64::from), int),
        ("tokens_per_minute", tpm.map(u64::from), int),
        ("token_budget", budget, bigint),
    ] {
        match value {
            Some(0) => {
                return Err(invalid(
                    param,
                    format!("{param} must be at least 1 (null removes the limit)"),
                ));
            }
            Some(value) if value > max => {
                return Err(invalid(param, format!("{param} must be at most {max}")));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_a_prefix_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), PREFIX_LEN + SECRET_LEN);
        assert_eq!(prefix_of(&a), Some(&a[..PREFIX_LEN]));
        assert_eq!(prefix_of("sk-short"), None);
        assert_eq!(prefix_of(&a.replacen("sk-", "pk-", 1)), None);
        assert_eq!(hash(&a).len(), 64);
    }
}
