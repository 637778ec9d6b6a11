//! Where a running `slough up` or `slough run` listens: `<data_dir>/run/<pid>.json`,
//! written once every server it started listens and removed when it stops. A port the
//! system picked (a configured port 0) is known only there, so other commands
//! (`slough status`, scripts, the tests that start `slough` as a child) read it
//! instead of guessing a free port beforehand.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::platform::ServiceHandle;

/// What one running `slough` process serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    pub pid: u32,
    /// The NATS server its services use.
    pub nats_url: String,
    /// By service name: its admin server's URL and the servers it bound (the
    /// gateway's `api`, monitoring's `status`).
    pub services: BTreeMap<String, ServiceAddresses>,
}

/// Where one service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddresses {
    pub admin: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, SocketAddr>,
}

/// How long a service's servers get to start listening before the file is written
/// without them.
const LISTEN_LIMIT: Duration = Duration::from_secs(60);

impl RunFile {
    /// This process's file for `services` on `nats_url`, once their servers listen.
    pub async fn of(nats_url: &str, services: &[ServiceHandle]) -> RunFile {
        let mut addresses = BTreeMap::new();
        for service in services {
            let mut servers = BTreeMap::new();
            for &name in service.servers() {
                let bound = tokio::time::timeout(LISTEN_LIMIT, service.address(name)).await;
                if let Ok(Some(address)) = bound {
                    servers.insert(name.to_owned(), address);
                }
            }
            addresses.insert(
                service.kind().name().to_owned(),
                ServiceAddresses {
                    admin: service.admin_url().to_owned(),
                    servers,
                },
            );
        }
        RunFile {
            pid: std::process::id(),
            nats_url: nats_url.to_owned(),
            services: addresses,
        }
    }

    /// The address of `service`'s server `name`, if it runs here.
    pub fn server(&self, service: &str, name: &str) -> Option<SocketAddr> {
        self.services.get(service)?.servers.get(name).copied()
    }

    /// Writes the file (readable by its owner only, as the data directory is); it is
    /// removed when the returned guard drops.
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<Written> {
        let path = path(data_dir, self.pid);
        let dir = run_dir(data_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Whole or not at all: a reader never sees half a file.
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Written(path))
    }

    /// The file process `pid` wrote under `data_dir`, if it is there.
    pub fn read(data_dir: &Path, pid: u32) -> Option<RunFile> {
        let text = std::fs::read(path(data_dir, pid)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The files of `slough` processes still running under `data_dir` (a file whose
    /// process is gone, after a crash, is skipped).
    pub fn running(data_dir: &Path) -> Vec<RunFile> {
        let Ok(entries) = std::fs::read_dir(run_dir(data_dir)) else {
            return Vec::new();
        };
        let mut files: Vec<RunFile> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let pid = name.to_str()?.strip_suffix(".json")?.parse().ok()?;
                let alive = Path::new(&format!("/proc/{pid}")).exists();
                alive.then(|| RunFile::read(data_dir, pid)).flatten()
            })
            .collect();
        files.sort_by_key(|file| file.pid);
        files
    }
}

/// A written run file; removed on drop.
#[derive(Debug)]
pub struct Written(PathBuf);

impl Written {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

fn path(data_dir: &Path, pid: u32) -> PathBuf {
    run_dir(data_dir).join(format!("{pid}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(pid: u32) -> RunFile {
        RunFile {
            pid,
            nats_url: "nats://127.0.0.1:40000".to_owned(),
            services: BTreeMap::from([(
                "gateway".to_owned(),
                ServiceAddresses {
                    admin: "http://127.0.0.1:40001".to_owned(),
                    servers: BTreeMap::from([(
                        "api".to_owned(),
                        SocketAddr::from(([127, 0, 0, 1], 40002)),
                    )]),
                },
            )]),
        }
    }

    #[test]
    fn a_run_file_is_found_while_its_process_runs_and_gone_after() {
        let data = tempfile::tempdir().unwrap();
        let mine = example(std::process::id());
        let written = mine.write(data.path()).unwrap();
        assert_eq!(RunFile::read(data.path(), mine.pid), Some(mine.clone()));
        assert_eq!(
            mine.server("gateway", "api"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40002)))
        );
        // A file left by a process that died is not a running platform.
        let _stale = example(u32::MAX - 1).write(data.path()).unwrap();
        assert_eq!(RunFile::running(data.path()), [mine]);
        drop(written);
        assert!(RunFile::running(data.path()).is_empty());
    }
}
