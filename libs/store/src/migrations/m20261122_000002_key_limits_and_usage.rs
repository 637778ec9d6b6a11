//! Adds per-key limits to `api_keys` and creates `usage`, one row per API request
//! (see `entities::usage`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for column in [
            text_null(ApiKeys::AllowedModels),
            integer_null(ApiKeys::RequestsPerMinute),
            integer_null(ApiKeys::TokensPerMinute),
            big_integer_null(ApiKeys::TokenBudget),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Usage::Table)
                    .col(uuid(Usage::Id).primary_key())
                    .col(uuid(Usage::KeyId))
                    .col(string(Usage::Endpoint))
                    .col(string(Usage::Model))
                    .col(big_integer(Usage::PromptTokens))
                    .col(big_integer(Usage::CompletionTokens))
                    .col(big_integer(Usage::LatencyMs))
                    .col(small_integer(Usage::Status))
                    .col(timestamp_with_time_zone(Usage::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("usage_key_created")
                    .table(Usage::Table)
                    .col(Usage::KeyId)
                    .col(Usage::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Usage::Table).to_owned())
            .await?;
        for column in [
            ApiKeys::AllowedModels,
            ApiKeys::RequestsPerMinute,
            ApiKeys::TokensPerMinute,
            ApiKeys::TokenBudget,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    AllowedModels,
    RequestsPerMinute,
    TokensPerMinute,
    TokenBudget,
}

#[derive(DeriveIden)]
enum Usage {
    Table,
    Id,
    KeyId,
    Endpoint,
    Model,
    PromptTokens,
    CompletionTokens,
    LatencyMs,
    Status,
    CreatedAt,
}
