//! A `nats-server` child process with JetStream, listening on loopback only: what
//! `slough up` runs when `NATS_URL` is unset, and what tests run. Port 0 lets the server
//! pick its own port (`--port -1`); either way the server is ready when it has written
//! its ports file (`--ports_file_dir`, named after its pid), so the port read back is
//! the one this child listens on, never another process's.
//!
//! A server may be one node of a cluster ([`ClusterOptions`]): it listens for routes on a
//! port of its own pick too, and joins the nodes its routes name. JetStream's cluster
//! mode will not start without a route, so the first node of a cluster names one that
//! never answers (port 1 on loopback) until the others connect to it.

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::ServiceError;

/// How to start the server.
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    /// The binary; `nats-server` on `PATH` when `None`.
    pub binary: Option<PathBuf>,
    /// Port on 127.0.0.1; 0 lets the server pick a free one.
    pub port: u16,
    /// JetStream's store directory (created if missing). The log file and the
    /// configuration file go beside it.
    pub store_dir: PathBuf,
    /// The largest message the server carries; NATS's default (1 MiB) when `None`.
    pub max_payload: Option<usize>,
    /// Node of a cluster, when set.
    pub cluster: Option<ClusterOptions>,
}

/// One node of a cluster of servers with replicated JetStream.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's name, the same on every node.
    pub name: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Route URLs of nodes already running (`nats://127.0.0.1:<cluster port>`); none for
    /// the first node.
    pub routes: Vec<String>,
}

/// A running `nats-server`. Stopped (SIGTERM, then SIGKILL) when dropped, and killed by
/// the kernel if this process dies first, so it is never orphaned.
pub struct NatsServer {
    child: Child,
    binary: PathBuf,
    options: NatsServerOptions,
    port: u16,
    /// The port it takes routes from other nodes on (0 outside a cluster).
    cluster_port: u16,
    log_file: PathBuf,
}

const INSTALL_HINT: &str = "install it with `apt-get install nats-server` (Debian/Ubuntu) or \
     run ./scripts/setup, or point NATS_URL at an existing server";

impl NatsServer {
    /// Starts the server and waits until it accepts connections.
    pub fn start(options: &NatsServerOptions) -> Result<NatsServer, ServiceError> {
        let binary = match &options.binary {
            Some(binary) if binary.exists() => binary.clone(),
            Some(binary) => {
                return Err(ServiceError::NatsServer(format!(
                    "nats-server binary {} does not exist; {INSTALL_HINT}",
                    binary.display()
                )));
            }
            None => find_on_path("nats-server").ok_or_else(|| {
                ServiceError::NatsServer(format!("nats-server is not on PATH; {INSTALL_HINT}"))
            })?,
        };
        std::fs::create_dir_all(&options.store_dir).map_err(|source| ServiceError::Io {
            context: format!("cannot create {}", options.store_dir.display()),
            source,
        })?;
        let port = options.port;
        if port != 0 && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Err(ServiceError::NatsServer(format!(
                "port {port} on 127.0.0.1 is already in use; stop what listens there, \
                 set SLOUGH_NATS__SERVER__PORT to another port (0 picks a free one), \
                 or set NATS_URL to use a server that is already running"
            )));
        }
        let log_file = options.store_dir.with_extension("log");
        let mut server = NatsServer {
            child: spawn(&binary, options, Ports::default(), &log_file)?,
            binary,
            options: options.clone(),
            port,
            cluster_port: 0,
            log_file,
        };
        let ports = server.wait_ready(Duration::from_secs(15))?;
        server.port = ports.client;
        server.cluster_port = ports.cluster;
        Ok(server)
    }

    /// Whether the server has exited (reaping it), and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Starts the server again on the ports it had with the same store, after it exited.
    /// Spawn from the thread that started it first (see [`NatsServer::start`]).
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        self.stop();
        let ports = Ports {
            client: self.port,
            cluster: self.cluster_port,
        };
        self.child = spawn(&self.binary, &self.options, ports, &self.log_file)?;
        self.wait_ready(Duration::from_secs(15)).map(drop)
    }

    /// Starts `nodes` servers as one cluster named `name`: node `i` (named `node<i>`) as
    /// `options(i)` says, routed to the first node.
    pub fn start_cluster(
        name: &str,
        nodes: usize,
        options: impl Fn(usize) -> NatsServerOptions,
    ) -> Result<Vec<NatsServer>, ServiceError> {
        let mut servers: Vec<NatsServer> = Vec::with_capacity(nodes);
        for index in 0..nodes {
            let routes = servers.first().and_then(NatsServer::route_url);
            let node = NatsServerOptions {
                cluster: Some(ClusterOptions {
                    name: name.to_owned(),
                    node: format!("node{index}"),
                    routes: routes.into_iter().collect(),
                }),
                ..options(index)
            };
            servers.push(NatsServer::start(&node)?);
        }
        Ok(servers)
    }

    /// `nats://127.0.0.1:<cluster port>`, the URL other nodes route to (a cluster node only).
    pub fn route_url(&self) -> Option<String> {
        (self.cluster_port != 0).then(|| format!("nats://127.0.0.1:{}", self.cluster_port))
    }

    /// The client URLs of `servers`, comma-separated: what `NATS_URL` takes.
    pub fn seed_urls(servers: &[NatsServer]) -> String {
        servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it writes its log.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops it: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until this child has written its ports file and accepts connections on
    /// the client port written there; returns its ports.
    fn wait_ready(&mut self, limit: Duration) -> Result<Ports, ServiceError> {
        let deadline = Instant::now() + limit;
        let ports_file =
            ports_dir(&self.options).join(format!("{}_{}.ports", self.binary_name(), self.pid()));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(ServiceError::NatsServer(format!(
                    "nats-server exited with {status} before it was ready: {} (log: {})",
                    stderr.trim(),
                    self.log_file.display()
                )));
            }
            if let Some(ports) = Ports::read(&ports_file) {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.client));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(ports);
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(ServiceError::NatsServer(format!(
                    "nats-server did not report a port it accepts connections on within \
                     {limit:?} (looked for {}; log: {})",
                    ports_file.display(),
                    self.log_file.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The name the server gives its ports file: its executable's file name.
    fn binary_name(&self) -> String {
        self.binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nats-server".to_owned())
    }
}

/// Where the server writes its ports file: beside its store.
fn ports_dir(options: &NatsServerOptions) -> PathBuf {
    options.store_dir.with_extension("ports")
}

/// The ports a server listens on (0: let it pick, or none).
#[derive(Debug, Clone, Copy, Default)]
struct Ports {
    client: u16,
    cluster: u16,
}

impl Ports {
    /// The ports in a ports file (`{"nats": ["nats://127.0.0.1:4222"], "cluster":
    /// [...]}`), once the file is there and whole.
    fn read(ports_file: &Path) -> Option<Ports> {
        #[derive(serde::Deserialize)]
        struct File {
            nats: Vec<String>,
            #[serde(default)]
            cluster: Vec<String>,
        }
        fn port(urls: &[String]) -> Option<u16> {
            urls.first()?.rsplit(':').next()?.parse().ok()
        }
        let text = std::fs::read_to_string(ports_file).ok()?;
        let file: File = serde_json::from_str(&text).ok()?;
        Some(Ports {
            client: port(&file.nats)?,
            cluster: port(&file.cluster).unwrap_or(0),
        })
    }
}

/// Starts `nats-server` on 127.0.0.1 with JetStream (on `ports`, 0: ones it picks),
/// logging to `log_file` and writing its ports file to [`ports_dir`]; a `max_payload`
/// goes in a configuration file beside the store (the server has no flag).
fn spawn(
    binary: &Path,
    options: &NatsServerOptions,
    ports: Ports,
    log_file: &Path,
) -> Result<Child, ServiceError> {
    let ports_dir = ports_dir(options);
    std::fs::create_dir_all(&ports_dir).map_err(|source| ServiceError::Io {
        context: format!("cannot create {}", ports_dir.display()),
        source,
    })?;
    let pick = |port: u16| match port {
        0 => "-1".to_owned(),
        port => port.to_string(),
    };
    let port = pick(options.port.max(ports.client));
    let mut command = Command::new(binary);
    command
        .args(["--addr", "127.0.0.1", "--port", &port, "--jetstream"])
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .arg("--store_dir")
        .arg(&options.store_dir)
        .arg("--log")
        .arg(log_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(cluster) = &options.cluster {
        let routes = if cluster.routes.is_empty() {
            "nats://127.0.0.1:1".to_owned()
        } else {
            cluster.routes.join(",")
        };
        command
            .args([
                "--server_name",
                &cluster.node,
                "--cluster_name",
                &cluster.name,
            ])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", pick(ports.cluster)))
            .args(["--routes", &routes]);
    }
    if let Some(max_payload) = options.max_payload {
        let config = options.store_dir.with_extension("conf");
        std::fs::write(&config, format!("max_payload: {max_payload}\n")).map_err(|source| {
            ServiceError::Io {
                context: format!("cannot write {}", config.display()),
                source,
            }
        })?;
        command.arg("--config").arg(config);
    }
    die_with_parent(&mut command);
    command.spawn().map_err(|source| ServiceError::Io {
        context: format!("cannot start {}", binary.display()),
        source,
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[allow(unsafe_code)] // pre_exec and signals have no safe std API
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    // PR_SET_PDEATHSIG fires when the spawning thread exits: spawn from a thread that
    // lives as long as the server is wanted (the main thread, or a test's thread).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)] // see die_with_parent
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: sending a signal to our own child, whose pid we hold.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, port: u16) -> NatsServerOptions {
        NatsServerOptions {
            binary: None,
            port,
            store_dir: dir.join("jetstream"),
            max_payload: None,
            cluster: None,
        }
    }

    #[test]
    fn port_zero_is_the_servers_own_pick_and_survives_a_restart() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut first = NatsServer::start(&options(a.path(), 0)).unwrap();
        let second = NatsServer::start(&options(b.path(), 0)).unwrap();
        assert_ne!(first.port(), 0);
        assert_ne!(first.port(), second.port());
        assert_eq!(first.url(), format!("nats://127.0.0.1:{}", first.port()));
        let port = first.port();
        first.stop();
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        first.restart().unwrap();
        assert_eq!(first.port(), port, "a restart keeps the port");
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
    }

    #[test]
    fn a_taken_port_is_refused_by_name() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let running = NatsServer::start(&options(a.path(), 0)).unwrap();
        let Err(err) = NatsServer::start(&options(b.path(), running.port())) else {
            panic!("a second server on a taken port started");
        };
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "port {} on 127.0.0.1 is already in use",
                running.port()
            )),
            "{message}"
        );
    }
}
