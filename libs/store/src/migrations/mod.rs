//! Schema migrations, applied in order by [`Migrator`] when a store opens. Never edit
//! a migration that has shipped: add a new one.

use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261122_000001_api_keys;
mod m20261122_000002_key_limits_and_usage;
mod m20261201_000001_personas;
mod m20261201_000002_collections;
mod m20261202_000001_fine_tuning;
mod m20261202_000002_stored_completions;
mod m20261207_000001_collection_owners;
mod m20261207_000002_pii;
mod m20261207_000003_audit_events;
mod m20261207_000004_data_subjects;

/// Applies the migrations below.
#[derive(Debug)]
pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_api_keys::Migration),
            Box::new(m20261122_000002_key_limits_and_usage::Migration),
            Box::new(m20261201_000001_personas::Migration),
            Box::new(m20261201_000002_collections::Migration),
            Box::new(m20261202_000001_fine_tuning::Migration),
            Box::new(m20261202_000002_stored_completions::Migration),
            Box::new(m20261207_000001_collection_owners::Migration),
            Box::new(m20261207_000002_pii::Migration),
            Box::new(m20261207_000003_audit_events::Migration),
            Box::new(m20261207_000004_data_subjects::Migration),
        ]
    }
}
