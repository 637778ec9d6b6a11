//! The `slough` command's library half: the settings of the whole platform, the table
//! of services ([`services`]), the code that runs them in one process ([`platform`]),
//! where a running one listens ([`run_file`]), model package management, fine-tuning
//! jobs and datasets through the gateway. The binary (`main.rs`) parses the command
//! line; end-to-end tests start services through [`platform`] exactly as `slough up`
//! does. The benchmarks, evaluations and chaos scenarios are the `slough-tools` crate.

pub mod audit;
pub mod datasets;
pub mod gateway_client;
pub mod launch;
pub mod models;
pub mod platform;
pub mod run_file;
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
