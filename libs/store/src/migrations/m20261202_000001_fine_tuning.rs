//! Creates `files`, `fine_tuning_jobs`, `fine_tuning_events` and
//! `fine_tuning_checkpoints` (see their entities), and gives existing admin keys the new
//! `fine-tune` scope, as new admin keys get it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Files::Table)
                    .col(string(Files::Id).primary_key())
                    .col(string(Files::Owner))
                    .col(string(Files::Filename))
                    .col(string(Files::Purpose))
                    .col(big_integer(Files::Bytes))
                    .col(timestamp_with_time_zone(Files::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(string(Jobs::Id).primary_key())
                    .col(string(Jobs::Owner))
                    .col(string(Jobs::Model))
                    .col(string(Jobs::TrainingFile))
                    .col(string_null(Jobs::ValidationFile))
                    .col(string(Jobs::Status))
                    .col(string(Jobs::Method))
                    .col(text(Jobs::Hyperparameters))
                    .col(text(Jobs::Lora))
                    .col(string_null(Jobs::Suffix))
                    .col(big_integer(Jobs::Seed))
                    .col(string_null(Jobs::FineTunedModel))
                    .col(big_integer_null(Jobs::TrainedTokens))
                    .col(text_null(Jobs::Error))
                    .col(text_null(Jobs::Result))
                    .col(text_null(Jobs::Metadata))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone_null(Jobs::FinishedAt))
                    .col(timestamp_with_time_zone_null(Jobs::EstimatedFinish))
                    .col(string_null(Jobs::LeaseOwner))
                    .col(timestamp_with_time_zone_null(Jobs::LeaseExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_integer(Events::Seq).auto_increment().primary_key())
                    .col(string(Events::JobId))
                    .col(string(Events::Level))
                    .col(string(Events::Kind))
                    .col(text(Events::Message))
                    .col(text_null(Events::Data))
                    .col(timestamp_with_time_zone(Events::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("fine_tuning_events_job")
                    .table(Events::Table)
                    .col(Events::JobId)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Checkpoints::Table)
                    .col(string(Checkpoints::Id).primary_key())
                    .col(string(Checkpoints::JobId))
                    .col(big_integer(Checkpoints::Step))
                    .col(double(Checkpoints::TrainLoss))
                    .col(double_null(Checkpoints::ValidLoss))
                    .col(timestamp_with_time_zone(Checkpoints::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE api_keys SET scopes = scopes || ' fine-tune' \
                 WHERE (' ' || scopes || ' ') LIKE '% admin %' \
                 AND (' ' || scopes || ' ') NOT LIKE '% fine-tune %'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Checkpoints::Table.into_iden(),
            Events::Table.into_iden(),
            Jobs::Table.into_iden(),
            Files::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Files {
    Table,
    Id,
    Owner,
    Filename,
    Purpose,
    Bytes,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    #[sea_orm(iden = "fine_tuning_jobs")]
    Table,
    Id,
    Owner,
    Model,
    TrainingFile,
    ValidationFile,
    Status,
    Method,
    Hyperparameters,
    Lora,
    Suffix,
    Seed,
    FineTunedModel,
    TrainedTokens,
    Error,
    Result,
    Metadata,
    CreatedAt,
    FinishedAt,
    EstimatedFinish,
    LeaseOwner,
    LeaseExpiresAt,
}

#[derive(DeriveIden)]
enum Events {
    #[sea_orm(iden = "fine_tuning_events")]
    Table,
    Seq,
    JobId,
    Level,
    Kind,
    Message,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Checkpoints {
    #[sea_orm(iden = "fine_tuning_checkpoints")]
    Table,
    Id,
    JobId,
    Step,
    TrainLoss,
    ValidLoss,
    CreatedAt,
}
