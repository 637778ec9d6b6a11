//! `slough models`: import, list and remove model packages under `<data>/models`, with
//! a progress bar while importing.

use std::{path::Path, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use slough_modelkit::{
    llama::BuildOptions,
    package::{self, ImportOptions, Imported, Manifest, Progress},
};
use slough_protocol::{
    Event,
    inference::{self, ModelEvent},
};

/// Tells running inference services that a package came or went
/// (`slough.v1.events.models.*`), so they load or unload it. Best effort: with no NATS
/// server reachable within a second, nobody is running to tell.
fn announce(nats_url: &str, topic: &Event<ModelEvent>, id: &str) {
    // One connection attempt, no retries: nothing is running when it fails.
    let options = slough_bus::BusOptions {
        connect_timeout: Duration::ZERO,
        ..slough_bus::BusOptions::default()
    };
    let publish = async {
        let bus = tokio::time::timeout(
            Duration::from_secs(1),
            slough_bus::connect(nats_url, "slough-models", options),
        )
        .await
        .ok()?
        .ok()?;
        let event = ModelEvent {
            model: id.to_owned(),
        };
        let sent = bus.emit(topic, &event).await.ok();
        bus.close().await;
        sent
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime
        && runtime.block_on(publish).is_some()
    {
        tracing::debug!(topic = topic.topic(), model = id, "announced");
    }
}

/// A terminal progress bar: a spinner per stage, a byte bar while hashing.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn stage(&self, name: &str) {
        self.0.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        self.0.set_message(name.to_owned());
    }

    fn bytes(&self, done: u64, total: u64) {
        if self.0.length() != Some(total) {
            self.0.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            self.0.set_length(total);
        }
        self.0.set_position(done);
    }
}

/// Imports `source` and says what happened.
pub fn import(
    models_dir: &Path,
    nats_url: &str,
    source: &Path,
    id: Option<String>,
    build: BuildOptions,
) -> anyhow::Result<()> {
    let bar = Bar(ProgressBar::new_spinner());
    bar.0.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let outcome = package::import(
        source,
        models_dir,
        &ImportOptions {
            id,
            build,
            parent: None,
        },
        &bar,
    );
    bar.0.finish_and_clear();
    match outcome? {
        Imported::Created(manifest) => {
            let size = package_size(&models_dir.join(&manifest.id));
            println!(
                "imported {} ({} {}, {:.1} MB) in {:.1} s",
                manifest.id,
                manifest.architecture,
                kind(&manifest),
                size as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
            announce(nats_url, &inference::MODEL_ADDED, &manifest.id);
        }
        Imported::AlreadyPresent(manifest) => println!(
            "{} is already imported from this source; nothing to do",
            manifest.id
        ),
    }
    Ok(())
}

/// Prints the packages as a table or JSON.
pub fn list(models_dir: &Path, json: bool) -> anyhow::Result<()> {
    let manifests = package::list(models_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header([
            "ID",
            "KIND",
            "ARCHITECTURE",
            "CONTEXT",
            "QUANTIZATION",
            "SIZE",
            "SOURCE",
        ]);
    for manifest in &manifests {
        table.add_row([
            manifest.id.clone(),
            kind(manifest).to_owned(),
            manifest.architecture.clone(),
            manifest.context_length.to_string(),
            manifest
                .quantization
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned(),
            format!(
                "{:.1} MB",
                package_size(&models_dir.join(&manifest.id)) as f64 / 1e6
            ),
            format!(
                "{} (sha256 {}…)",
                manifest.source.file,
                &manifest.source.sha256[..12.min(manifest.source.sha256.len())]
            ),
        ]);
    }
    println!(
        "{table}\n{} model(s) in {}",
        manifests.len(),
        models_dir.display()
    );
    Ok(())
}

/// Removes a package.
pub fn remove(models_dir: &Path, nats_url: &str, id: &str) -> anyhow::Result<()> {
    let manifest = package::remove(models_dir, id)?;
    println!("removed {}", manifest.id);
    announce(nats_url, &inference::MODEL_REMOVED, &manifest.id);
    Ok(())
}

fn kind(manifest: &Manifest) -> &'static str {
    match manifest.kind {
        package::ModelKind::Chat => "chat",
        package::ModelKind::Embedding => "embedding",
        package::ModelKind::Classifier => "classifier",
    }
}

fn package_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
