//! One sweep of the bus: ask every service instance for `$SRV.INFO` and `$SRV.STATS`,
//! collect the answers that arrive within a window, and check each instance's `/readyz`.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use slough_bus::{Bus, BusError};
use slough_protocol::{
    ServiceKind,
    health::HealthReport,
    status::EndpointStatus,
    subjects::{self, DiscoveryVerb},
};

/// An instance as one sweep saw it.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub id: String,
    pub service: ServiceKind,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub admin_url: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
    /// `None` when ready, else why not.
    pub problem: Option<String>,
}

/// The parts of a `$SRV.INFO` answer we use.
#[derive(Debug, Deserialize)]
struct Info {
    id: String,
    name: String,
    version: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

/// The parts of a `$SRV.STATS` answer we use.
#[derive(Debug, Deserialize)]
struct Stats {
    id: String,
    started: DateTime<Utc>,
    #[serde(default)]
    endpoints: Vec<EndpointStats>,
}

#[derive(Debug, Deserialize)]
struct EndpointStats {
    name: String,
    subject: String,
    #[serde(default)]
    num_requests: u64,
    #[serde(default)]
    num_errors: u64,
    /// Nanoseconds.
    #[serde(default)]
    average_processing_time: u64,
    #[serde(default)]
    last_error: Option<String>,
}

/// Sweeps the bus once. Instances of services that are not ours are ignored; an
/// instance that answered only one of the two questions is left for the next sweep.
pub async fn sweep(
    bus: &Bus,
    http: &reqwest::Client,
    window: Duration,
) -> Result<Vec<Sighting>, BusError> {
    let (infos, stats) = tokio::try_join!(
        bus.discover::<Info>(DiscoveryVerb::Info, window),
        bus.discover::<Stats>(DiscoveryVerb::Stats, window),
    )?;
    let mut stats: HashMap<String, Stats> = stats
        .into_iter()
        .map(|stats| (stats.id.clone(), stats))
        .collect();
    let sightings = infos.into_iter().filter_map(|info| {
        let service = ServiceKind::from_name(&info.name)?;
        let stats = stats.remove(&info.id)?;
        let admin_url = info
            .metadata
            .and_then(|mut metadata| metadata.remove(subjects::META_ADMIN_URL));
        Some(Sighting {
            id: info.id,
            service,
            version: info.version,
            started_at: stats.started,
            admin_url,
            endpoints: stats.endpoints.into_iter().map(endpoint_status).collect(),
            problem: None,
        })
    });
    let checked = sightings.map(|mut sighting| async move {
        sighting.problem = match &sighting.admin_url {
            Some(admin_url) => readiness_problem(http, admin_url, window).await,
            None => Some("it advertises no admin URL".to_owned()),
        };
        sighting
    });
    Ok(futures::future::join_all(checked).await)
}

fn endpoint_status(stats: EndpointStats) -> EndpointStatus {
    EndpointStatus {
        name: stats.name,
        subject: stats.subject,
        requests: stats.num_requests,
        errors: stats.num_errors,
        average_processing_ms: stats.average_processing_time as f64 / 1e6,
        last_error: stats.last_error.filter(|error| !error.is_empty()),
    }
}

/// Asks the instance's `/readyz`; `None` when it is ready.
async fn readiness_problem(
    http: &reqwest::Client,
    admin_url: &str,
    timeout: Duration,
) -> Option<String> {
    let url = format!("{}/readyz", admin_url.trim_end_matches('/'));
    let response = match http.get(&url).timeout(timeout).send().await {
        Ok(response) => response,
        Err(err) => return Some(format!("{url} does not answer: {err}")),
    };
    if response.status().is_success() {
        return None;
    }
    let status = response.status();
    match response.json::<HealthReport>().await {
        Ok(report) => {
            let failing: Vec<String> = report
                .checks
                .into_iter()
                .filter(|check| !check.ok)
                .map(|check| match check.detail {
                    Some(detail) => format!("{}: {detail}", check.name),
                    None => check.name,
                })
                .collect();
            Some(format!("not ready ({})", failing.join("; ")))
        }
        Err(_) => Some(format!("{url} answered {status}")),
    }
}
