//! Stored chat completions (`store: true`), the feedback given on them, and the
//! fine-tuning dataset they make: good answers as they were, corrected ones with their
//! correction. Rows live in the store's `stored_completions` table.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, Condition, EntityTrait as _, QueryFilter as _,
    QueryOrder as _, Set, sea_query::Expr,
};
use serde_json::{Value, json};
use slough_store::{Store, entities::stored_completion};

/// Highest and lowest rating.
pub const RATINGS: std::ops::RangeInclusive<i32> = 1..=5;

/// Keeps a completion: the conversation it answered and its first choice, for the key
/// `owner` and the end user the request named.
pub async fn save(
    store: &Store,
    id: &str,
    owner: &str,
    end_user: Option<&str>,
    model: &str,
    messages: &[(String, String)],
    answer: &str,
) -> Result<(), sea_orm::DbErr> {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    stored_completion::ActiveModel {
        id: Set(id.to_owned()),
        owner: Set(owner.to_owned()),
        model: Set(model.to_owned()),
        messages: Set(Value::Array(messages).to_string()),
        answer: Set(answer.to_owned()),
        created_at: Set(Utc::now()),
        rating: Set(None),
        correction: Set(None),
        rated_at: Set(None),
        end_user: Set(end_user.map(str::to_owned)),
    }
    .insert(store.connection())
    .await?;
    Ok(())
}

/// Records a rating (and a better answer) on the completion `id` of `owner` (any
/// owner's when `None`); `false` when there is no such stored completion.
pub async fn rate(
    store: &Store,
    id: &str,
    owner: Option<&str>,
    rating: i32,
    correction: Option<&str>,
) -> Result<bool, sea_orm::DbErr> {
    let mut update = stored_completion::Entity::update_many()
        .col_expr(stored_completion::Column::Rating, Expr::value(rating))
        .col_expr(
            stored_completion::Column::Correction,
            Expr::value(correction.map(str::to_owned)),
        )
        .col_expr(stored_completion::Column::RatedAt, Expr::value(Utc::now()))
        .filter(stored_completion::Column::Id.eq(id));
    if let Some(owner) = owner {
        update = update.filter(stored_completion::Column::Owner.eq(owner));
    }
    Ok(update.exec(store.connection()).await?.rows_affected == 1)
}

/// The fine-tuning examples feedback made, oldest first: each completion rated at
/// least `min_rating` with its answer, and each corrected one with its correction (one
/// `{"messages": [...]}` per example, OpenAI's chat format).
pub async fn dataset(store: &Store, min_rating: i32) -> Result<Vec<Value>, sea_orm::DbErr> {
    let rows = stored_completion::Entity::find()
        .filter(
            Condition::any()
                .add(stored_completion::Column::Rating.gte(min_rating))
                .add(stored_completion::Column::Correction.is_not_null()),
        )
        .order_by_asc(stored_completion::Column::CreatedAt)
        .order_by_asc(stored_completion::Column::Id)
        .all(store.connection())
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let mut messages: Vec<Value> = serde_json::from_str(&row.messages).ok()?;
            let answer = row.correction.unwrap_or(row.answer);
            messages.push(json!({"role": "assistant", "content": answer}));
            Some(json!({ "messages": messages }))
        })
        .collect())
}
