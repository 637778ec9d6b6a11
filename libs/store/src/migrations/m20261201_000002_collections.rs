//! Creates `collections` and `collection_documents` (see `entities::collection` and
//! `entities::collection_document`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Collections::Table)
                    .col(string(Collections::Name).primary_key())
                    .col(string(Collections::EmbeddingModel))
                    .col(integer(Collections::Dimensions))
                    .col(integer(Collections::ChunkSize))
                    .col(integer(Collections::ChunkOverlap))
                    .col(timestamp_with_time_zone(Collections::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CollectionDocuments::Table)
                    .col(string(CollectionDocuments::Collection))
                    .col(string(CollectionDocuments::DocumentId))
                    .col(string(CollectionDocuments::ContentHash))
                    .col(big_integer(CollectionDocuments::Chunks))
                    .col(big_integer(CollectionDocuments::Bytes))
                    .col(timestamp_with_time_zone(CollectionDocuments::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(CollectionDocuments::Collection)
                            .col(CollectionDocuments::DocumentId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CollectionDocuments::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Collections::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Collections {
    Table,
    Name,
    EmbeddingModel,
    Dimensions,
    ChunkSize,
    ChunkOverlap,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CollectionDocuments {
    Table,
    Collection,
    DocumentId,
    ContentHash,
    Chunks,
    Bytes,
    UpdatedAt,
}
