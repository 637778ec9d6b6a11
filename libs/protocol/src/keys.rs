//! Events about API keys, which live in the gateway's store: every gateway replica
//! caches the keys it authenticated for a few seconds, and drops a key from its cache
//! as soon as any replica says it changed (revoked, its limits or scopes edited, its
//! data erased), so a change holds across the fleet at once, not when caches expire.

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
