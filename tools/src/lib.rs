//! SloughGPT's measuring tools, apart from the server binary: speed benchmarks
//! (`bench*`), quality evaluations (`eval_*`) and chaos scenarios (`chaos`). The
//! `slough-tools` binary runs them; `slough bench|eval|chaos` hands its arguments to it.
//! Depends on the `slough` library for the settings, the services and the gateway
//! client; nothing in the platform depends on this crate.

pub mod bench;
pub mod bench_gateway;
pub mod bench_rag;
pub mod bench_training;
pub mod chaos;
pub mod eval_perplexity;
pub mod eval_persona;
pub mod eval_retrieval;

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
