//! Creates `stored_completions` (see `entities::stored_completion`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StoredCompletions::Table)
                    .col(string(StoredCompletions::Id).primary_key())
                    .col(string(StoredCompletions::Owner))
                    .col(string(StoredCompletions::Model))
                    .col(text(StoredCompletions::Messages))
                    .col(text(StoredCompletions::Answer))
                    .col(timestamp_with_time_zone(StoredCompletions::CreatedAt))
                    .col(integer_null(StoredCompletions::Rating))
                    .col(text_null(StoredCompletions::Correction))
                    .col(timestamp_with_time_zone_null(StoredCompletions::RatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StoredCompletions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum StoredCompletions {
    Table,
    Id,
    Owner,
    Model,
    Messages,
    Answer,
    CreatedAt,
    Rating,
    Correction,
    RatedAt,
}
