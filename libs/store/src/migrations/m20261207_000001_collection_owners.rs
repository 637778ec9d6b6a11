//! Gives `collections` an `owner`: the id of the API key that created the collection.
//! Collections made before there were owners get none, which means the admins': only
//! admin keys reach them.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Collections::Table)
                    .add_column(string_null(Collections::Owner))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Collections::Table)
                    .drop_column(Collections::Owner)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Collections {
    Table,
    Owner,
}
