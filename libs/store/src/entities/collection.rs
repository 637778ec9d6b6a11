//! `collections`: the RAG service's collections; their chunks live in the vector store.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "collections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub embedding_model: String,
    /// The embedding model's vector size.
    pub dimensions: i32,
    /// Tokens per chunk.
    pub chunk_size: i32,
    /// Tokens shared by neighbouring chunks.
    pub chunk_overlap: i32,
    pub created_at: DateTimeUtc,
    /// The id of the API key that created it; none: the admins' (made before owners).
    pub owner: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
