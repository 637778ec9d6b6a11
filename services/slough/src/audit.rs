//! `slough audit verify`: walks the audit log's hash chain in the store the
//! configuration names (SQLite under the data directory, or `SLOUGH_DATABASE_URL`) and
//! names the first record edited, deleted or inserted behind the platform's back.

use crate::Settings;

/// Prints how many records verify and the newest one's hash; an error naming the first
/// broken record.
pub fn verify(settings: &Settings) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        let store = slough_store::Store::open(
            settings.common.database_url.as_ref(),
            &settings.common.data_dir,
        )
        .await?;
        let outcome = slough_store::audit::verify(store.connection()).await;
        store.close().await;
        match outcome? {
            Ok(verified) => {
                match (verified.last, verified.since) {
                    (Some((seq, hash)), Some(since)) => {
                        println!(
                            "the audit chain holds: {} records since {since}, the newest \
                             audit-{seq} with hash {hash} (keep it to tell if newer records \
                             go missing)",
                            verified.records
                        );
                        if let Some(checkpoint) = verified.checkpoint {
                            println!(
                                "older records were removed by retention, as checkpoint \
                                 audit-{checkpoint} records"
                            );
                        }
                    }
                    _ => println!("the audit log is empty"),
                }
                Ok(())
            }
            Err(broken) => anyhow::bail!("the audit chain is broken at {broken}"),
        }
    })
}
