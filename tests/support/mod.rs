//! What the end-to-end tests share: settings for a platform on a test nats-server.

use slough::Settings;
use slough_testkit::{TestNats, onnxruntime_library};

/// Settings for a platform on `nats`: every port picked free, data in the test's
/// directory, monitoring sweeping at its default pace.
pub fn settings(nats: &TestNats) -> Settings {
    let mut settings = Settings::default();
    settings.common.data_dir = nats.dir().join("data");
    settings.common.nats_url = Some(nats.url());
    settings.inference.runtime.library = Some(onnxruntime_library());
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    settings.gateway.listen = any;
    settings.gateway.admin_listen = any;
    settings.inference.admin_listen = any;
    settings.rag.admin_listen = any;
    settings.personality.admin_listen = any;
    settings.training.admin_listen = any;
    settings.monitoring.admin_listen = any;
    settings.monitoring.listen = any;
    settings
}
