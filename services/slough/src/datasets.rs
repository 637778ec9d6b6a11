//! `slough datasets from-feedback`: a fine-tuning file from the feedback on stored chat
//! completions (`store: true`): each completion rated at least `--min-rating` with its
//! answer, each corrected one with the correction, one `{"messages": [...]}` per line on
//! standard output, ready for `slough train` or `POST /v1/files`. Reads the store the
//! configuration names (SQLite under the data directory, or `SLOUGH_DATABASE_URL`).

use std::io::Write as _;

use crate::Settings;

/// Writes the examples to standard output and their count to standard error.
pub fn from_feedback(settings: &Settings, min_rating: i32) -> anyhow::Result<()> {
    if !slough_gateway::stored::RATINGS.contains(&min_rating) {
        anyhow::bail!("--min-rating is {min_rating}; it must be 1 to 5");
    }
    crate::runtime()?.block_on(async {
        let store = slough_store::Store::open(
            settings.common.database_url.as_ref(),
            &settings.common.data_dir,
        )
        .await?;
        let examples = slough_gateway::stored::dataset(&store, min_rating).await?;
        store.close().await;
        let mut out = std::io::stdout().lock();
        for example in &examples {
            writeln!(out, "{example}")?;
        }
        eprintln!(
            "{} examples (rated {min_rating} or better, or corrected)",
            examples.len()
        );
        Ok(())
    })
}
