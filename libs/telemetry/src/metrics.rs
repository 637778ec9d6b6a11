//! One Prometheus registry per service instance. Metric names follow
//! `slough_<service>_<what>_<unit>`; every metric has a help text and bounded labels.

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::TelemetryError;

/// A new registry for one service, holding the process collector and
/// `slough_<service>_build_info{version}` = 1.
pub fn service_registry(service: &str, version: &str) -> Result<Registry, TelemetryError> {
    let registry = Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build_info = IntGaugeVec::new(
        Opts::new(
            format!("slough_{service}_build_info"),
            "Always 1; the version label says which build this instance runs.",
        ),
        &["version"],
    )?;
    build_info.with_label_values(&[version]).set(1);
    registry.register(Box::new(build_info))?;
    Ok(registry)
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder as _;
    let mut buffer = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    // Encoding into a Vec only fails on metrics with invalid names, which registration
    // already rejected; render what we have.
    let _ = encoder.encode(&registry.gather(), &mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_renders_build_info() {
        let registry = service_registry("rag", "1.2.3").unwrap();
        let text = render(&registry);
        assert!(
            text.contains("slough_rag_build_info{version=\"1.2.3\"} 1"),
            "{text}"
        );
        assert!(text.contains("# HELP slough_rag_build_info"));
    }
}
