//! Personal data: `api_keys.pii_policy`, what the gateway does with personal data in
//! the key's requests (`mask` or `block`; none, as every key made before it has, is
//! `off`), and `usage.pii_masked`, how many findings of each type a request had masked
//! (a JSON object; none when nothing was).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(string_null(ApiKeys::PiiPolicy))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Usage::Table)
                    .add_column(string_null(Usage::PiiMasked))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Usage::Table)
                    .drop_column(Usage::PiiMasked)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::PiiPolicy)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    PiiPolicy,
}

#[derive(DeriveIden)]
enum Usage {
    Table,
    PiiMasked,
}
