//! The platform's relational store: sea-orm entities and migrations, on a SQLite file
//! under the data directory by default or on PostgreSQL when `SLOUGH_DATABASE_URL` says
//! so. Opening a [`Store`] brings its schema up to date.

pub mod audit;
pub mod entities;
mod migrations;

use std::{path::Path, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend,
    TransactionTrait as _,
};
use sea_orm_migration::MigratorTrait as _;
use secrecy::{ExposeSecret as _, SecretString};

pub use migrations::Migrator;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one we can use.
    #[error("unsupported database URL (expected postgres://... or sqlite://...): {0}")]
    UnsupportedUrl(String),
    /// The data directory for the SQLite file could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to the {backend} store: {source}")]
    Connect {
        backend: &'static str,
        source: sea_orm::DbErr,
    },
    /// Bringing the schema up to date failed.
    #[error("cannot migrate the store: {0}")]
    Migrate(sea_orm::DbErr),
    /// A query failed.
    #[error("store query failed: {0}")]
    Query(#[from] sea_orm::DbErr),
}

/// Whether `err` means the database cannot be reached now (connection refused or lost,
/// the pool exhausted, the server shutting down or refusing connections, a SQLite file
/// busy) rather than a wrong query: callers answer 503 and try again later.
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err)) => {
            match err {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // PostgreSQL: connection exceptions (08), operator intervention (57P),
                // "not accepting connections" (55000), too many connections (53300);
                // SQLite: busy (5) and locked (6).
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || ["55000", "53300", "5", "6"].contains(&code.as_ref())
                }),
                _ => false,
            }
        }
        _ => false,
    }
}

/// A connection pool on a migrated database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

/// Arbitrary key for PostgreSQL's advisory lock that serializes migrations between
/// replicas starting together.
const MIGRATION_LOCK_KEY: i64 = 0x534c_4f55_4748; // "SLOUGH"

/// Serializes migrations between services of one process (SQLite has no advisory locks).
static MIGRATION_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates the data directory (mode 0700) and the SQLite file (mode 0600) when they are
/// missing: the store holds API key hashes and usage, for its owner's eyes only. SQLite
/// gives its `-wal` and `-shm` files the database file's mode.
fn create_private(data_dir: &Path, file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

impl Store {
    /// Opens PostgreSQL at `database_url`, or `<data_dir>/slough.db` when it is `None`,
    /// and applies pending migrations.
    pub async fn open(
        database_url: Option<&SecretString>,
        data_dir: &Path,
    ) -> Result<Store, StoreError> {
        let url = match database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => {
                let file = data_dir.join("slough.db");
                create_private(data_dir, &file).map_err(|source| StoreError::DataDir {
                    path: data_dir.display().to_string(),
                    source,
                })?;
                format!("sqlite://{}?mode=rwc", file.display())
            }
        };
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            "postgres"
        } else if url.starts_with("sqlite:") {
            "sqlite"
        } else {
            return Err(StoreError::UnsupportedUrl(redact(&url)));
        };
        let mut options = ConnectOptions::new(url);
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        let db = Database::connect(options)
            .await
            .map_err(|source| StoreError::Connect { backend, source })?;
        if db.get_database_backend() == DbBackend::Sqlite {
            // Readers do not block the writer, and the file survives a crash mid-write.
            db.execute_unprepared("PRAGMA journal_mode=WAL")
                .await
                .map_err(StoreError::Migrate)?;
        }
        let store = Store { db };
        store.migrate().await?;
        tracing::info!(backend, "store ready");
        Ok(store)
    }

    /// The connection pool, for queries through the [`entities`].
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            DbBackend::MySql => "mysql",
        }
    }

    /// Checks that the database answers (a readiness check).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Query)
    }

    /// Closes the pool.
    pub async fn close(self) {
        if let Err(err) = self.db.close().await {
            tracing::warn!(error = %err, "closing the store failed");
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let _in_process = MIGRATION_LOCK.lock().await;
        let txn = self.db.begin().await.map_err(StoreError::Migrate)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await
            .map_err(StoreError::Migrate)?;
        }
        Migrator::up(&txn, None)
            .await
            .map_err(StoreError::Migrate)?;
        txn.commit().await.map_err(StoreError::Migrate)
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) => {
            let host = &url[at..];
            let user = rest.split([':', '@']).next().unwrap_or_default();
            format!("{scheme}://{user}:***{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("mysql://me:secret@db/x"), "mysql://me:***@db/x");
        assert_eq!(redact("nonsense"), "nonsense");
    }
}
