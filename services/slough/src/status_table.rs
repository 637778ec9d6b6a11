//! `slough status` as tables for a terminal: the instances, then JetStream's streams.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use slough_protocol::status::StatusReport;

/// Renders one row per instance, then one per stream.
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
    let instances = format!("{table}\n{} instance(s), {swept}", report.instances.len());
    if report.streams.is_empty() {
        return instances;
    }
    let mut streams = Table::new();
    streams
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["STREAM", "COPIES", "CURRENT", "MESSAGES", "BYTES", "HOLDS"]);
    for stream in &report.streams {
        streams.add_row([
            stream.name.clone(),
            stream.replicas.to_string(),
            stream.current.to_string(),
            stream.messages.to_string(),
            stream.bytes.to_string(),
            stream.description.clone().unwrap_or_default(),
        ]);
    }
    format!("{instances}\n\n{streams}")
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
    fn streams_show_their_copies_under_the_instances() {
        let report = StatusReport {
            swept_at: None,
            instances: Vec::new(),
            streams: vec![slough_protocol::status::StreamStatus {
                name: "OBJ_slough-files".to_owned(),
                description: Some("SloughGPT uploaded files".to_owned()),
                replicas: 3,
                current: 2,
                messages: 7,
                bytes: 4096,
            }],
        };
        let text = render(&report);
        let row = text
            .lines()
            .find(|line| line.contains("OBJ_slough-files"))
            .unwrap_or_default();
        let cells: Vec<&str> = row
            .split('┆')
            .map(|cell| cell.trim_matches(['│', ' ']))
            .collect();
        assert_eq!(
            cells,
            [
                "OBJ_slough-files",
                "3",
                "2",
                "7",
                "4096",
                "SloughGPT uploaded files"
            ]
        );
        assert!(text.find("0 instance(s)") < text.find("STREAM"));
    }

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(125), "2m05s");
        assert_eq!(uptime(7_260), "2h01m");
        assert_eq!(uptime(90_000), "1d01h");
    }
}
