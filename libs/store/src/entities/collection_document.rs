//! `collection_documents`: each document of a collection with the hash of the text its
//! current chunks came from (re-ingesting the same text changes nothing).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "collection_documents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub collection: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub document_id: String,
    /// SHA-256 of the text, format and metadata, hex.
    pub content_hash: String,
    pub chunks: i64,
    /// The text's size.
    pub bytes: i64,
    pub updated_at: DateTimeUtc,
    /// The id of the API key that last wrote the document (none before this was kept).
    pub added_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
