//! `slough audit verify`: walks the audit log's hash chain in the store the
//! configuration names (SQLite under the data directory, or `SLOUGH_DATABASE_URL`) and
//! names the first record edited, deleted or inserted behind the platform's back. And
//! [`record_local`]: the audit events of `slough` commands that change the platform
//! without going through the API (`slough models import` and `rm`).

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

/// Records a change a local operator made with `slough` (actor `local:<user>`): the
/// command as `action`, the model as the resource. A store that cannot be reached is
/// reported on standard error; the change itself stands.
pub fn record_local(
    settings: &Settings,
    action: &str,
    resource_id: Option<String>,
    summary: serde_json::Value,
    succeeded: bool,
) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let event = slough_store::audit::NewEvent::local(
        format!("local:{user}"),
        action,
        "models",
        resource_id,
        summary,
        if succeeded { 200 } else { 500 },
    );
    let recorded = crate::runtime().and_then(|runtime| {
        runtime.block_on(async {
            let store = slough_store::Store::open(
                settings.common.database_url.as_ref(),
                &settings.common.data_dir,
            )
            .await?;
            let appended = slough_store::audit::append(store.connection(), event).await;
            store.close().await;
            appended?;
            anyhow::Ok(())
        })
    });
    if let Err(err) = recorded {
        eprintln!("warning: `{action}` could not be recorded in the audit log: {err:#}");
    }
}
