//! The personality service: personas applied to chats, text-style metrics, and how well
//! a response matches its persona. Endpoints (`slough.v1.personality.<name>`):
//! `list_personas`, `get_persona`, `create_persona`, `update_persona`,
//! `delete_persona`, `compose`, `analyze`, `adherence`.
//!
//! A request's path: [`handlers`] decodes it; personas come from [`personas`] (built-in
//! ones in code, the rest in the store), [`compose`] applies one to a chat, [`style`]
//! measures a text and [`adherence`] scores the measure against a persona's traits.

pub mod adherence;
pub mod classifiers;
pub mod compose;
pub mod config;
mod handlers;
pub mod metrics;
pub mod personas;
pub mod style;
pub mod vader;

use slough_service::{ServiceContext, ServiceError};
use tokio_util::sync::CancellationToken;

/// The crate version, which is the version the instance registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the instance says it does in `$SRV.INFO`.
pub const DESCRIPTION: &str = "Personas, text-style metrics and persona adherence";

/// The `[personality]` section of the configuration: its admin port.
pub use config::Config;

/// Serves until `shutdown` is cancelled, then leaves the bus.
pub async fn run(
    ctx: ServiceContext,
    // Its one setting, the admin server's address, is already the context's.
    _config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let metrics = metrics::Metrics::register(ctx.registry())
        .map_err(slough_telemetry::TelemetryError::from)?;
    let store = ctx.open_store().await?;
    let mut host = ctx.register(DESCRIPTION).await?;
    let state = handlers::Personality {
        personas: personas::Personas::new(store.clone()),
        metrics,
        classifiers: classifiers::Classifiers::new(ctx.common().models_dir(), ctx.bus().clone()),
    };
    handlers::add(&mut host, state).await?;
    let served = ctx.serve(host, shutdown).await;
    store.close().await;
    served
}
