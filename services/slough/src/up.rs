//! `slough up`: the nats-server children (one, or a local cluster; each restarted when
//! it exits), every service in this process, the first admin key and the banner, until
//! Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::Context as _;

use slough_protocol::ServiceKind;
use slough_service::NatsServer;

use crate::{Platform, Settings, platform::ServiceHandle, run_file::RunFile, runtime};

/// `slough up`. nats-server is started from the main thread, before the runtime, so the
/// kernel's parent-death signal (tied to the thread that forked it) fires only when this
/// process exits.
pub fn up(mut settings: Settings) -> anyhow::Result<()> {
    let mut nats = match &settings.common.nats_url {
        Some(_) => Vec::new(),
        None => {
            let embedded = &settings.common.nats.server;
            let servers = embedded.start(&settings.common.data_dir.join("nats"))?;
            for server in &servers {
                tracing::info!(url = %server.url(), log = %server.log_file().display(), "started nats-server");
            }
            settings.common.nats_url = Some(NatsServer::seed_urls(&servers));
            servers
        }
    };
    let result = runtime().and_then(|rt| rt.block_on(up_services(&settings, &mut nats)));
    for server in &mut nats {
        server.stop();
    }
    if !nats.is_empty() {
        tracing::info!("nats-server stopped");
    }
    result
}

/// Runs every service until Ctrl-C, SIGTERM or a service's failure, restarting each
/// nats-server child (`nats`) whenever it exits. This future runs on the main thread
/// (`block_on`), so a restarted server keeps the parent-death signal of the first.
async fn up_services(settings: &Settings, nats: &mut [NatsServer]) -> anyhow::Result<()> {
    let nats_url = settings.nats_url();
    if nats.len() > 1 {
        // The services make their streams once every node can hold a copy.
        let options = settings.common.nats.bus_options();
        slough_bus::wait_for_cluster(&nats_url, nats.len(), options, Duration::from_secs(30))
            .await
            .with_context(|| {
                let logs = settings.common.data_dir.join("nats");
                format!("see the nodes' logs under {}", logs.display())
            })?;
        tracing::info!(nodes = nats.len(), "NATS cluster formed");
    }
    let new_admin_key = bootstrap_admin_key(settings).await?;
    let platform = Platform::start(&ServiceKind::ALL, settings, &nats_url).await?;
    // The addresses the servers bound (a configured port 0 becomes a real one), for the
    // banner and for the commands that look for a running platform.
    let run_file = RunFile::of(&nats_url, platform.services()).await;
    let _written = run_file.write(&settings.common.data_dir)?;
    print_banner(
        settings,
        &run_file,
        platform.services(),
        new_admin_key.as_deref(),
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut supervisors: Vec<Supervisor> = nats.iter().map(|_| Supervisor::default()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let reason = loop {
        tokio::select! {
            signal = &mut shutdown => break signal?,
            () = platform.failed() => break "a service failed",
            _ = tick.tick() => {
                for (server, supervisor) in nats.iter_mut().zip(&mut supervisors) {
                    supervisor.check(server);
                }
            }
        }
    };
    tracing::info!("stopping ({reason})");
    let errors = platform.stop().await;
    if let Some((kind, err)) = errors.into_iter().next() {
        anyhow::bail!("{kind} stopped with an error: {err}");
    }
    tracing::info!("all services stopped");
    Ok(())
}

/// Restarts the nats-server child when it exits: at once the first time, then with a
/// backoff doubling from 0.5 s to 10 s while restarts keep failing.
#[derive(Default)]
struct Supervisor {
    failures: u32,
    next_try: Option<std::time::Instant>,
}

impl Supervisor {
    fn check(&mut self, server: &mut NatsServer) {
        if self.next_try.is_none() {
            let Some(status) = server.exited() else {
                return;
            };
            tracing::error!(%status, log = %server.log_file().display(), "nats-server exited; restarting it");
            self.next_try = Some(std::time::Instant::now());
        }
        if self
            .next_try
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            return;
        }
        let started = std::time::Instant::now();
        match server.restart() {
            Ok(()) => {
                tracing::info!(
                    url = %server.url(),
                    after_failed_tries = self.failures,
                    took_ms = started.elapsed().as_millis() as u64,
                    "nats-server restarted; services reconnect on their own"
                );
                *self = Supervisor::default();
            }
            Err(err) => {
                self.failures += 1;
                let delay = Duration::from_millis(500 * 2u64.pow(self.failures.min(5)))
                    .min(Duration::from_secs(10));
                tracing::error!(error = %err, retry_in = ?delay, "nats-server did not restart");
                self.next_try = Some(std::time::Instant::now() + delay);
            }
        }
    }
}

/// Makes sure the store holds an admin key (`SLOUGH_ADMIN_KEY`'s, or a generated one,
/// returned so that it can be printed once). The one place that does it: `slough up`
/// and `slough run gateway`, before a gateway starts.
pub async fn bootstrap_admin_key(settings: &Settings) -> anyhow::Result<Option<String>> {
    let store = slough_store::Store::open(
        settings.common.database_url.as_ref(),
        &settings.common.data_dir,
    )
    .await?;
    let from_env = slough_gateway::keys::admin_key_from_env();
    let created = slough_gateway::keys::bootstrap_admin_key(
        &store,
        &settings.common.data_dir,
        from_env.as_deref(),
    )
    .await;
    store.close().await;
    Ok(created?)
}

/// The generated first admin key, shown once.
pub fn print_new_admin_key(settings: &Settings, key: &str) {
    println!(
        "First start: generated an admin API key (shown only now; also in {}):",
        slough_gateway::keys::admin_key_path(&settings.common.data_dir).display()
    );
    println!("  {key}");
}

fn print_banner(
    settings: &Settings,
    run_file: &RunFile,
    services: &[ServiceHandle],
    new_admin_key: Option<&str>,
) {
    println!("SloughGPT {} is up.", env!("CARGO_PKG_VERSION"));
    let api = run_file
        .server(ServiceKind::Gateway.name(), "api")
        .unwrap_or(settings.gateway.listen);
    let status = run_file.server(ServiceKind::Monitoring.name(), "status");
    println!("  console (browser)     http://{api}/");
    println!("  gateway (OpenAI API)  http://{api}/v1");
    println!(
        "  status                http://{}/v1/status",
        status.unwrap_or(settings.monitoring.listen)
    );
    println!("  NATS                  {}", run_file.nats_url);
    println!(
        "  data                  {}",
        settings.common.data_dir.display()
    );
    println!("  admin endpoints (/metrics /livez /readyz):");
    for service in services {
        println!("    {:<12} {}", service.kind().name(), service.admin_url());
    }
    if let Some(key) = new_admin_key {
        print_new_admin_key(settings, key);
    }
    println!("Press Ctrl-C to stop.");
}

/// Resolves on Ctrl-C or SIGTERM, naming which.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("Ctrl-C") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}
