//! The `slough` binary as a user runs it: `slough up` starts nats-server and all six
//! services in an owner-only data directory, `slough status` lists them with working
//! metrics URLs, a `slough run` replica that is killed leaves the status within 10 s, a
//! nats-server that dies is restarted and everything recovers, SIGTERM stops everything
//! (nats-server included), and a missing nats-server is explained.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use slough_protocol::{ServiceKind, status::StatusReport};
use slough_testkit::{free_port, onnxruntime_library};

/// Environment for a platform under `dir` on its own ports.
struct Env {
    vars: Vec<(String, String)>,
    nats_port: u16,
}

impl Env {
    fn new(dir: &Path) -> Env {
        let nats_port = free_port();
        let mut vars = vec![
            (
                "SLOUGH_DATA_DIR".to_owned(),
                dir.join("data").display().to_string(),
            ),
            (
                "SLOUGH_NATS__SERVER__PORT".to_owned(),
                nats_port.to_string(),
            ),
            (
                "SLOUGH_GATEWAY__LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            (
                "SLOUGH_INFERENCE__RUNTIME__LIBRARY".to_owned(),
                onnxruntime_library().display().to_string(),
            ),
            (
                "SLOUGH_MONITORING__LISTEN".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ),
        ];
        for kind in ServiceKind::ALL {
            vars.push((
                format!("SLOUGH_{}__ADMIN_LISTEN", kind.name().to_uppercase()),
                "127.0.0.1:0".to_owned(),
            ));
        }
        Env { vars, nats_port }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slough"));
        command
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("SLOUGH_CONFIG")
            .env_remove("SLOUGH_ADMIN_KEY")
            .envs(self.vars.iter().cloned());
        command
    }

    fn status(&self) -> Option<StatusReport> {
        let output = self.command(&["status", "--json"]).output().unwrap();
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).unwrap())
    }

    /// Polls `slough status --json` until `done` holds; returns the report and the wait.
    fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&StatusReport) -> bool,
    ) -> (StatusReport, Duration) {
        let started = Instant::now();
        loop {
            if let Some(report) = self.status().filter(|report| done(report)) {
                return (report, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "not reached within {limit:?}; last: {:#?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn count(report: &StatusReport, kind: ServiceKind) -> usize {
    report
        .instances
        .iter()
        .filter(|instance| instance.service == kind)
        .count()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_status_run_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(dir.path());

    let output = env.command(&["status"]).output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is the platform running"),
        "{}",
        stderr(&output)
    );

    let log_path = dir.path().join("up.log");
    let mut up = env
        .command(&["up"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    for line in BufReader::new(up.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert!(
        banner.contains("gateway (OpenAI API)") && banner.contains("admin endpoints"),
        "{banner}"
    );
    // The first start prints the generated admin key once and keeps it, private.
    let key_file = dir.path().join("data/admin-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(banner.contains(key.trim()), "{banner}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_file), 0o600);
    // The whole data directory is its owner's: the store holds key hashes and usage.
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for file in ["slough.db", "slough.db-wal", "slough.db-shm"] {
        let path = dir.path().join("data").join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }

    let (report, _) = env.wait_for(Duration::from_secs(30), |report| {
        ServiceKind::ALL
            .iter()
            .all(|&kind| count(report, kind) == 1)
            && report.instances.iter().all(|i| i.healthy)
    });
    let http = reqwest::Client::new();
    for instance in &report.instances {
        assert_eq!(instance.version, env!("CARGO_PKG_VERSION"));
        let url = instance.metrics_url.as_deref().unwrap();
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        assert!(
            text.contains(&format!("slough_{}_", instance.service)),
            "{url} serves no slough_ metrics"
        );
    }
    let table = env.command(&["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("6 instance(s)"));

    // A second personality replica joins, then dies without saying goodbye.
    let mut replica = env
        .command(&["run", "personality"])
        .env("NATS_URL", format!("nats://127.0.0.1:{}", env.nats_port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for(Duration::from_secs(20), |report| {
        count(report, ServiceKind::Personality) == 2
    });
    replica.kill().unwrap();
    replica.wait().unwrap();
    let (_, took) = env.wait_for(Duration::from_secs(12), |report| {
        count(report, ServiceKind::Personality) == 1
    });
    eprintln!("a killed replica left the status after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // nats-server dies: `slough up` says so, restarts it, and every service comes back.
    let killed = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("nats-server.*--port {}", env.nats_port),
        ])
        .status()
        .unwrap();
    assert!(killed.success(), "no nats-server to kill");
    let gone = Instant::now();
    let (_, took) = env.wait_for(Duration::from_secs(20), |report| {
        ServiceKind::ALL
            .iter()
            .all(|&kind| count(report, kind) == 1)
            && report.instances.iter().all(|i| i.healthy)
    });
    eprintln!(
        "all six healthy again {:?} after nats-server was killed ({took:?} of polling)",
        gone.elapsed()
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "colours in a log that is not a terminal"
    );
    assert!(log.contains("nats-server exited; restarting it"), "{log}");
    assert!(log.contains("nats-server restarted"), "{log}");
    // Libraries stay quiet: no ONNX Runtime session dumps at the default level.
    assert!(
        !log.lines().any(|line| line.contains("ort::")),
        "ONNX Runtime's info logs are shown:\n{log}"
    );

    signal(&up, "TERM");
    let status = wait_exit(&mut up, Duration::from_secs(30));
    assert!(status.success(), "slough up exited with {status}");
    assert!(
        TcpStream::connect(("127.0.0.1", env.nats_port)).is_err(),
        "nats-server outlived slough up"
    );
}

#[test]
fn a_missing_nats_server_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(dir.path());
    let output = env
        .command(&["up"])
        .env("SLOUGH_NATS__SERVER__BINARY", "/nonexistent/nats-server")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("apt-get install nats-server"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_services_and_bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(dir.path());
    let output = env.command(&["run", "oracle"]).output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unknown service \"oracle\""),
        "{}",
        stderr(&output)
    );

    let output = env
        .command(&["up"])
        .env("SLOUGH_MONITORING__SWEEP_INTERVALL_MS", "5")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("sweep_intervall_ms"),
        "{}",
        stderr(&output)
    );
}
