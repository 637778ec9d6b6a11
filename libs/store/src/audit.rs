//! The audit chain over `audit_events`: [`append`] adds an event after the last one,
//! hashing the last one's hash together with the new event's content; [`verify`] walks
//! the chain from the first event and names the first one whose content no longer
//! matches its hash, or that does not follow the one before it (a record edited,
//! deleted or inserted behind the platform's back). Removing the newest records leaves
//! a shorter chain that still verifies: keep a copy of the last hash (`slough audit
//! verify` prints it) to tell.
//!
//! Retention ([`prune`]) removes the oldest records and appends a checkpoint record
//! first, in the chain like any other, that names the hash the first record kept
//! follows (its `anchor`): a chain that starts after the genesis verifies only when a
//! checkpoint in it vouches for where it starts.

use chrono::{DateTime, SubsecRound as _, Utc};
use sea_orm::{
    ActiveModelTrait as _, ActiveValue::NotSet, ColumnTrait as _, DatabaseConnection, DbErr,
    EntityTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    SqlErr,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::entities::audit_event::{self, Model};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "genesis";

/// The action of a retention checkpoint.
pub const CHECKPOINT: &str = "audit.checkpoint";

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub actor: String,
    pub actor_prefix: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub summary: Value,
    pub client_address: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub status: u16,
}

impl NewEvent {
    /// An event with no HTTP request behind it (the platform itself, or a local
    /// operator's command): no key prefix, client address, request or trace.
    pub fn local(
        actor: String,
        action: &str,
        resource_type: &str,
        resource_id: Option<String>,
        summary: Value,
        status: u16,
    ) -> NewEvent {
        NewEvent {
            actor,
            actor_prefix: None,
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id,
            summary,
            client_address: None,
            request_id: None,
            trace_id: None,
            status,
        }
    }
}

/// `succeeded`, `refused` or `failed`, from an HTTP status.
pub fn outcome(status: u16) -> &'static str {
    match status {
        ..400 => "succeeded",
        400..500 => "refused",
        _ => "failed",
    }
}

/// The hash an event carries: SHA-256 over the previous hash and the event's content,
/// in hex.
pub fn hash(event: &Model) -> String {
    let content = json!([
        event
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        event.actor,
        event.actor_prefix,
        event.action,
        event.resource_type,
        event.resource_id,
        event.summary,
        event.client_address,
        event.request_id,
        event.trace_id,
        event.outcome,
        event.status,
    ]);
    let mut hasher = Sha256::new();
    hasher.update(event.prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What [`prune`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub removed: u64,
    /// The checkpoint record appended.
    pub checkpoint: i64,
}

/// Removes the records older than `before`, after appending a checkpoint that vouches
/// for the record after them (see the module's notes). `None` when none is older.
pub async fn prune(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
) -> Result<Option<Pruned>, DbErr> {
    let newest_old = audit_event::Entity::find()
        .filter(audit_event::Column::At.lt(before))
        .order_by_desc(audit_event::Column::Seq)
        .one(db)
        .await?;
    let Some(through) = newest_old else {
        return Ok(None);
    };
    let removed = audit_event::Entity::find()
        .filter(audit_event::Column::Seq.lte(through.seq))
        .count(db)
        .await?;
    let summary = json!({
        "removed": removed,
        "through": through.seq,
        "before": before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "anchor": through.hash,
    });
    let checkpoint = append(
        db,
        NewEvent::local(
            "slough".to_owned(),
            CHECKPOINT,
            "audit",
            Some(format!("audit-{}", through.seq)),
            summary,
            200,
        ),
    )
    .await?;
    audit_event::Entity::delete_many()
        .filter(audit_event::Column::Seq.lte(through.seq))
        .exec(db)
        .await?;
    Ok(Some(Pruned {
        removed,
        checkpoint: checkpoint.seq,
    }))
}

/// The hash a checkpoint vouches the chain may start after.
fn anchor(event: &Model) -> Option<String> {
    if event.action != CHECKPOINT {
        return None;
    }
    let summary: Value = serde_json::from_str(&event.summary).ok()?;
    summary["anchor"].as_str().map(str::to_owned)
}

/// Appends `event` after the newest one. When another writer appended first (the
/// unique `prev_hash` refuses a second successor), reads the new newest and tries again.
pub async fn append(db: &DatabaseConnection, event: NewEvent) -> Result<Model, DbErr> {
    let mut attempts = 0;
    loop {
        let prev_hash = audit_event::Entity::find()
            .select_only()
            .column(audit_event::Column::Hash)
            .order_by_desc(audit_event::Column::Seq)
            .into_tuple::<String>()
            .one(db)
            .await?
            .unwrap_or_else(|| GENESIS.to_owned());
        let mut row = Model {
            seq: 0,
            // What the store keeps: microseconds.
            at: Utc::now().trunc_subsecs(6),
            actor: event.actor.clone(),
            actor_prefix: event.actor_prefix.clone(),
            action: event.action.clone(),
            resource_type: event.resource_type.clone(),
            resource_id: event.resource_id.clone(),
            summary: event.summary.to_string(),
            client_address: event.client_address.clone(),
            request_id: event.request_id.clone(),
            trace_id: event.trace_id.clone(),
            outcome: outcome(event.status).to_owned(),
            status: i16::try_from(event.status).unwrap_or(i16::MAX),
            prev_hash,
            hash: String::new(),
        };
        row.hash = hash(&row);
        let mut active: audit_event::ActiveModel = row.into();
        active.seq = NotSet;
        match active.insert(db).await {
            Ok(stored) => return Ok(stored),
            Err(err)
                if attempts < 50
                    && matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("audit-{0}: its content does not match its hash (the record was edited)")]
    Edited(i64),
    #[error(
        "audit-{0}: it does not follow the record before it (a record before it was deleted or inserted)"
    )]
    Unlinked(i64),
    #[error(
        "audit-{0}: the chain starts here, after records no retention checkpoint accounts for (the oldest records were deleted)"
    )]
    Unanchored(i64),
}

/// What [`verify`] found in an intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// The newest record's id and hash (`None` for an empty chain).
    pub last: Option<(i64, String)>,
    pub since: Option<DateTime<Utc>>,
    /// The retention checkpoint that vouches for where the chain starts, when older
    /// records were removed.
    pub checkpoint: Option<i64>,
}

/// Walks the chain from the first event, a page at a time.
pub async fn verify(db: &DatabaseConnection) -> Result<Result<Verified, Broken>, DbErr> {
    const PAGE: u64 = 1000;
    let mut prev = GENESIS.to_owned();
    let mut verified = Verified {
        records: 0,
        last: None,
        since: None,
        checkpoint: None,
    };
    // Where the chain starts, when it starts after records retention removed.
    let mut start: Option<(i64, String)> = None;
    let mut after = i64::MIN;
    loop {
        let rows = audit_event::Entity::find()
            .filter(audit_event::Column::Seq.gt(after))
            .order_by_asc(audit_event::Column::Seq)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(match start {
                Some((first, _)) if verified.checkpoint.is_none() => Err(Broken::Unanchored(first)),
                _ => Ok(verified),
            });
        };
        after = last.seq;
        for row in rows {
            if verified.records == 0 && row.prev_hash != GENESIS {
                start = Some((row.seq, row.prev_hash.clone()));
                prev.clone_from(&row.prev_hash);
            }
            if row.prev_hash != prev {
                return Ok(Err(Broken::Unlinked(row.seq)));
            }
            if hash(&row) != row.hash {
                return Ok(Err(Broken::Edited(row.seq)));
            }
            if let Some((_, from)) = &start
                && anchor(&row).as_deref() == Some(from.as_str())
            {
                verified.checkpoint = Some(row.seq);
            }
            verified.records += 1;
            verified.since.get_or_insert(row.at);
            prev = row.hash.clone();
            verified.last = Some((row.seq, row.hash));
        }
    }
}
