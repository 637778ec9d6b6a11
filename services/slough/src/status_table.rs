//! `slough status` as a table for a terminal.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use slough_protocol::status::StatusReport;

/// Renders one row per instance.
pub fn render(report: &StatusReport) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "SERVICE", "INSTANCE", "VERSION", "UPTIME", "HEALTHY", "REQUESTS", "ERRORS", "METRICS",
    ]);
    for instance in &report.instances {
        let requests: u64 = instance.endpoints.iter().map(|e| e.requests).sum();
        let errors: u64 = instance.endpoints.iter().map(|e| e.errors).sum();
        let healthy = match &instance.problem {
            None => "yes".to_owned(),
            Some(problem) => format!("no: {problem}"),
        };
        table.add_row([
            instance.service.name().to_owned(),
            instance.id.clone(),
            instance.version.clone(),
            uptime(instance.uptime_seconds),
            healthy,
            requests.to_string(),
            errors.to_string(),
            instance
                .metrics_url
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let swept = match report.swept_at {
        Some(at) => format!("last sweep {}", at.format("%Y-%m-%d %H:%M:%S UTC")),
        None => "monitoring has not swept the bus yet".to_owned(),
    };
    format!("{table}\n{} instance(s), {swept}", report.instances.len())
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(125), "2m05s");
        assert_eq!(uptime(7_260), "2h01m");
        assert_eq!(uptime(90_000), "1d01h");
    }
}
