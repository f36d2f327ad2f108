//! What operators and their probes read: `/livez`, `/readyz` and `/metrics`.
//!
//! The orchestrator serves them on its API port; each standalone service serves them on a small
//! port of its own (`METRICS_ADDR`), with [`serve`].

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::{Error, Result};

/// What every component reports to: its metrics and its readiness. Cheap to clone; one per
/// process, shared by every component running in it.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    pub metrics: Metrics,
    pub health: Health,
}

/// `/livez`: the process is up and serving. Checks nothing else, on purpose.
pub async fn livez() -> Response {
    (StatusCode::OK, Json(json!({"status": "alive"}))).into_response()
}

/// `/readyz`: 200 when every dependency answered its last check, else 503 naming what did not.
pub fn readyz(health: &Health) -> Response {
    let (ok, body) = health.report();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `/metrics` in the OpenMetrics text format.
pub fn metrics(metrics: &Metrics) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}

/// The three routes, for a process with no API of its own.
pub fn router(ops: Ops) -> Router {
    let (h, m) = (ops.health.clone(), ops.metrics.clone());
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(move || std::future::ready(readyz(&h))))
        .route("/metrics", get(move || std::future::ready(metrics(&m))))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such route; try /livez, /readyz or /metrics"})),
            )
        })
}

/// Binds `addr` (failing at once, naming the address, if it cannot) and serves [`router`] until
/// `cancel` fires. Returns the bound address (port 0 picks one) and the server's task.
pub async fn serve(
    addr: SocketAddr,
    ops: Ops,
    cancel: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            context: format!("binding METRICS_ADDR {addr}"),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the metrics address".into(),
        source,
    })?;
    let app = router(ops);
    let task = tokio::spawn(async move {
        crate::server::serve(
            listener,
            app,
            crate::server::Limits::default(),
            async move { cancel.cancelled().await },
        )
        .await;
    });
    tracing::info!(addr = %bound, "serving /livez, /readyz and /metrics");
    Ok((bound, task))
}

/// How a standalone service runs: serves [`router`] on `metrics_addr` if one is given, waits for
/// `service` to stop (after `cancel`, within the shutdown bound), and reports not ready as soon
/// as shutdown begins.
pub async fn run_service(
    metrics_addr: Option<SocketAddr>,
    ops: &Ops,
    cancel: &CancellationToken,
    service: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let server = match metrics_addr {
        Some(addr) => Some(serve(addr, ops.clone(), cancel.clone()).await?.1),
        None => None,
    };
    crate::shutdown::run_bounded(cancel, async {
        tokio::join!(crate::health::not_ready_once(&ops.health, cancel), service);
        if let Some(server) = server {
            let _ = server.await;
        }
    })
    .await;
    Ok(())
}
