//! An actix HTTP server running on the runtime, and the address it bound: what the admin
//! server, monitoring's status server and the gateway's API all start the same way.
//! Binding port 0 picks a free port; [`RunningServer::addr`] says which, so callers
//! (and tests) never guess a free port beforehand.

use std::net::SocketAddr;

use actix_web::dev::{Server, ServerHandle};

use crate::TelemetryError;

/// A server started with [`RunningServer::spawn`]; stop it with [`RunningServer::stop`].
pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Runs `server` on the runtime. `bound` is what `HttpServer::bind` bound (its
    /// `addrs()`); `asked` is the configured address, for the error when nothing was.
    pub fn spawn(
        server: Server,
        bound: &[SocketAddr],
        asked: SocketAddr,
    ) -> Result<RunningServer, TelemetryError> {
        let addr = bound.first().copied().ok_or_else(|| TelemetryError::Bind {
            addr: asked.to_string(),
            source: std::io::Error::other("no address was bound"),
        })?;
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(RunningServer { addr, handle, task })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish (as the server's shutdown timeout
    /// allows) and waits for the server to end.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// Binding `addr` failed.
pub fn bind_error(addr: SocketAddr) -> impl FnOnce(std::io::Error) -> TelemetryError {
    move |source| TelemetryError::Bind {
        addr: addr.to_string(),
        source,
    }
}
