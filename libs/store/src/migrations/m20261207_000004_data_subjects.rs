//! Whose data a row is, so that it can be exported or erased on request:
//! `usage.end_user` and `stored_completions.end_user`, the end user a request named
//! (OpenAI's `safety_identifier`, or its older `user`), and
//! `collection_documents.added_by`, the API key that last wrote a document. Rows made
//! before have none of these: they belong to their key only (documents to nobody).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for (table, column) in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(string_null(column))
                        .to_owned(),
                )
                .await?;
        }
        for (table, column) in columns() {
            manager
                .create_index(
                    Index::create()
                        .name(index_name(&table, &column))
                        .table(table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in columns() {
            manager
                .drop_index(
                    Index::drop()
                        .name(index_name(&table, &column))
                        .table(table.clone())
                        .to_owned(),
                )
                .await?;
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// The columns added, each with its table.
fn columns() -> [(Alias, Alias); 3] {
    [
        (Alias::new("usage"), Alias::new("end_user")),
        (Alias::new("stored_completions"), Alias::new("end_user")),
        (Alias::new("collection_documents"), Alias::new("added_by")),
    ]
}

fn index_name(table: &Alias, column: &Alias) -> String {
    format!("idx_{}_{}", table.to_string(), column.to_string())
}
