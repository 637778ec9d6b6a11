//! Creates `personas` (see `entities::persona`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Personas::Table)
                    .col(string(Personas::Id).primary_key())
                    .col(string(Personas::Name))
                    .col(text(Personas::Description))
                    .col(string(Personas::Archetype))
                    .col(text(Personas::Traits))
                    .col(text(Personas::StyleRules))
                    .col(text(Personas::SystemTemplate))
                    .col(text(Personas::Sampling))
                    .col(timestamp_with_time_zone(Personas::CreatedAt))
                    .col(timestamp_with_time_zone(Personas::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Personas::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Personas {
    Table,
    Id,
    Name,
    Description,
    Archetype,
    Traits,
    StyleRules,
    SystemTemplate,
    Sampling,
    CreatedAt,
    UpdatedAt,
}
