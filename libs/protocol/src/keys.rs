//! Events about API keys, which live in the gateway's store: every gateway replica
//! caches the keys it authenticated for a few seconds, and drops a key from its cache
//! as soon as any replica says it changed (revoked, its limits or scopes edited, its
//! data erased), so a change holds across the fleet at once, not when caches expire.
//! Each replica also announces the requests it admits and the tokens they use, so that
//! a key's per-minute limits hold for the fleet, not per replica.

use serde::{Deserialize, Serialize};

use crate::endpoint::Event;

/// A key was revoked or changed.
pub const KEY_CHANGED: Event<KeyChanged> = Event::new("keys.changed");

/// Published on `slough.v1.events.keys.changed`: the key that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyChanged {
    pub id: String,
    /// The key's public prefix, which the caches are keyed by.
    pub prefix: String,
}

/// A gateway replica admitted a request of a key or counted the tokens it used.
pub const KEY_USED: Event<KeyUsed> = Event::new("keys.used");

/// Published on `slough.v1.events.keys.used` by the replica that served the request, so
/// that every replica counts the key's requests and tokens per minute for the fleet
/// (only for keys with a per-minute limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyUsed {
    /// The key's id.
    pub key: String,
    /// The replica that sent it (it skips its own).
    pub origin: String,
    /// Requests admitted (0 or 1).
    pub requests: u32,
    /// The key's requests-per-minute limit the request was counted against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens a finished request used.
    pub tokens: u64,
}
