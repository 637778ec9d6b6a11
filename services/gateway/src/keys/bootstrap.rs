//! The first admin key: an empty store gets one when the platform starts, so its
//! operator can make the others. `SLOUGH_ADMIN_KEY` brings one (stored if it is not
//! yet); otherwise one is generated and written to `<data_dir>/admin-key` (mode 0600).
//! Either way the new key is in the audit log, made by the platform itself (`slough`).

use std::path::{Path, PathBuf};

use slough_store::Store;

use super::{
    KeyError,
    model::{KeySettings, MIN_KEY_LEN, Scope, generate, hash, prefix_of},
    repository::KeyRepository,
};

/// Makes sure an admin key exists. With `from_env` (`SLOUGH_ADMIN_KEY`), that key is
/// stored if it is not yet. Otherwise, when no usable admin key exists, one is
/// generated, written to [`admin_key_path`] and returned, for `slough` to print once.
pub async fn bootstrap_admin_key(
    store: &Store,
    data_dir: &Path,
    from_env: Option<&str>,
) -> Result<Option<String>, KeyError> {
    let repository = KeyRepository::new(store.clone());
    let settings = |name: &str| KeySettings {
        name: name.to_owned(),
        scopes: vec![Scope::Admin, Scope::Inference, Scope::Rag, Scope::FineTune],
        ..KeySettings::default()
    };
    if let Some(secret) = from_env {
        let prefix = prefix_of(secret).ok_or_else(|| {
            KeyError::AdminKey(format!(
                "SLOUGH_ADMIN_KEY must start with `sk-` and be at least {MIN_KEY_LEN} characters long"
            ))
        })?;
        return match repository.by_prefix(prefix).await? {
            Some(row) if row.secret_hash == hash(secret) && row.revoked_at.is_none() => Ok(None),
            Some(_) => Err(KeyError::AdminKey(format!(
                "SLOUGH_ADMIN_KEY starts like another (or a revoked) key ({prefix}…); choose another key"
            ))),
            None => {
                let key = repository
                    .insert(secret, settings("admin (SLOUGH_ADMIN_KEY)"))
                    .await?;
                audit(store, &key, "SLOUGH_ADMIN_KEY").await;
                Ok(None)
            }
        };
    }
    let usable = repository
        .list()
        .await?
        .iter()
        .any(|key| key.revoked_at.is_none() && key.scopes.contains(&Scope::Admin));
    if usable {
        return Ok(None);
    }
    let secret = generate();
    let key = repository
        .insert(&secret, settings("admin (generated)"))
        .await?;
    audit(store, &key, "generated").await;
    let path = admin_key_path(data_dir);
    write_private(&path, &secret).map_err(|source| KeyError::AdminKeyFile {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), "generated the first admin API key");
    Ok(Some(secret))
}

/// Records the first admin key's creation (`source`: where its secret came from).
async fn audit(store: &Store, key: &super::ApiKey, source: &str) {
    let event = slough_store::audit::NewEvent::local(
        "slough".to_owned(),
        "bootstrap admin key",
        "keys",
        Some(key.id.to_string()),
        serde_json::json!({"source": source, "prefix": key.prefix}),
        201,
    );
    if let Err(err) = slough_store::audit::append(store.connection(), event).await {
        tracing::error!(error = %err, "cannot record the first admin key in the audit log");
    }
}

/// `SLOUGH_ADMIN_KEY`, when set and not empty.
pub fn admin_key_from_env() -> Option<String> {
    std::env::var("SLOUGH_ADMIN_KEY")
        .ok()
        .filter(|key| !key.is_empty())
}

/// Where a generated admin key is written.
pub fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-key")
}

fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{secret}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::Keys;

    #[tokio::test]
    async fn the_first_admin_key_is_generated_once_or_taken_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let generated = bootstrap_admin_key(&store, dir.path(), None)
            .await
            .unwrap()
            .expect("a key on the first start");
        let file = std::fs::read_to_string(admin_key_path(dir.path())).unwrap();
        assert_eq!(file.trim(), generated);
        assert!(
            bootstrap_admin_key(&store, dir.path(), None)
                .await
                .unwrap()
                .is_none()
        );

        let keys = Keys::new(store.clone(), Duration::ZERO, None);
        let admin = keys
            .authenticate(Some(&format!("Bearer {generated}")))
            .await
            .unwrap();
        assert_eq!(
            admin.scopes,
            [Scope::Admin, Scope::FineTune, Scope::Inference, Scope::Rag]
        );

        let from_env = format!("sk-{}", "e".repeat(40));
        for start in ["first", "second"] {
            let outcome = bootstrap_admin_key(&store, dir.path(), Some(&from_env)).await;
            assert!(outcome.unwrap().is_none(), "{start} start");
        }
        keys.authenticate(Some(&format!("Bearer {from_env}")))
            .await
            .unwrap();
        let short = bootstrap_admin_key(&store, dir.path(), Some("sk-short")).await;
        assert!(short.unwrap_err().to_string().contains("SLOUGH_ADMIN_KEY"));
        let clash = format!("sk-{}{}", "e".repeat(12), "f".repeat(28));
        let clash = bootstrap_admin_key(&store, dir.path(), Some(&clash)).await;
        assert!(
            clash
                .unwrap_err()
                .to_string()
                .contains("starts like another")
        );
        store.close().await;
    }
}
