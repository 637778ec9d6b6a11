//! Creates `audit_events` (see `entities::audit_event`): the hash-chained record of
//! every change. `prev_hash` is unique, so two writers that read the same last record
//! cannot both append after it: the chain stays one line.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_integer(AuditEvents::Seq).auto_increment().primary_key())
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string(AuditEvents::Actor))
                    .col(string_null(AuditEvents::ActorPrefix))
                    .col(string(AuditEvents::Action))
                    .col(string(AuditEvents::ResourceType))
                    .col(string_null(AuditEvents::ResourceId))
                    .col(text(AuditEvents::Summary))
                    .col(string_null(AuditEvents::ClientAddress))
                    .col(string_null(AuditEvents::RequestId))
                    .col(string_null(AuditEvents::TraceId))
                    .col(string(AuditEvents::Outcome))
                    .col(small_integer(AuditEvents::Status))
                    .col(string(AuditEvents::PrevHash).unique_key())
                    .col(string(AuditEvents::Hash))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_at")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Seq,
    At,
    Actor,
    ActorPrefix,
    Action,
    ResourceType,
    ResourceId,
    Summary,
    ClientAddress,
    RequestId,
    TraceId,
    Outcome,
    Status,
    PrevHash,
    Hash,
}
