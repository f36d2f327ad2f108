//! The HTTP server loop of the orchestrator's API and of the services' probe ports.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout is off, and it accepts
//! without bound: a client that opens connections and sends half a request head, or keeps idle
//! keep-alive connections, holds a socket and a task each for ever. This loop is axum's with
//! those bounds: a request head (and, between requests, the next one) must arrive within
//! [`Limits::header_read_timeout`] or the connection is closed, a response must be taken by
//! the client within the same time (a client that pipelines requests and never reads the
//! answers would otherwise hold its connection past every timeout), and at most
//! [`Limits::max_connections`] are open at once (past that, new ones wait in the kernel's accept
//! queue until one closes, as Go's `LimitListener` does).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on what HTTP clients can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a request head may take to arrive, and how long a keep-alive connection may sit
    /// idle between requests.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// The limits as settings (`HTTP_MAX_CONNECTIONS`, `HTTP_HEADER_TIMEOUT`).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// HTTP connections open at once; more wait to be accepted.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// How long a request head may take, and a keep-alive connection may idle (`10s`, `500ms`).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s",
          value_parser = crate::time::parse_duration_setting)]
    pub http_header_timeout: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.http_max_connections as usize,
            header_read_timeout: self.http_header_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight finish
/// (idle connections close at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // A write that cannot proceed this long (the client's receive window full because it
        // does not read) fails, and hyper closes the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.header_read_timeout));
        let service = TowerToHyperService::new(router.clone());
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(Box::pin(stream)), service));
        tokio::spawn(async move {
            // A client that goes away or times out is not an error of the server.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
