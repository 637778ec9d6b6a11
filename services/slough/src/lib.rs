//! The `slough` command's library half: the settings of the whole platform, the table
//! of services ([`services`]), the code that runs them in one process ([`platform`]),
//! model package management, the benchmarks and the evaluations. The binary (`main.rs`) parses the
//! command line; end-to-end tests start services through [`platform`] exactly as
//! `slough up` does.

pub mod bench;
pub mod bench_gateway;
pub mod bench_rag;
pub mod bench_training;
pub mod chaos;
pub mod datasets;
pub mod eval_perplexity;
pub mod eval_persona;
pub mod eval_retrieval;
pub mod gateway_client;
pub mod models;
pub mod platform;
pub mod services;
pub mod settings;
pub mod status_table;
pub mod train;
pub mod up;

pub use platform::{Platform, ServiceHandle};
pub use settings::Settings;

/// The multi-threaded runtime every command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Writes a command's figures as pretty JSON to `path` and says where.
pub fn write_figures(
    path: &std::path::Path,
    figures: &impl serde::Serialize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::write(path, serde_json::to_string_pretty(figures)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("figures written to {}", path.display());
    Ok(())
}
