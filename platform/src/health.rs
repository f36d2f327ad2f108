//! Readiness that a probe can afford to ask for often.
//!
//! Each dependency is checked by a background task of its own (the database with `SELECT 1`,
//! the broker with a metadata request, a consumer group by its rebalance callbacks), which writes
//! its latest result here. `/readyz` only reads these results, so it answers at once even while
//! the broker is away (a metadata request blocks for seconds), and a result that has not been
//! refreshed in time counts as a failure, so a stuck checker cannot keep a dead process "ready".
//! `/livez` asks nothing of anyone: a broker outage must not become a restart storm.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::db::Db;

/// How often the database is pinged, and how long a ping may take.
const DB_EVERY: Duration = Duration::from_secs(2);
const DB_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the broker is asked for metadata, and how long that may take.
const BROKER_EVERY: Duration = Duration::from_secs(5);
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Check {
    ok: bool,
    detail: String,
    at: Instant,
    /// Past this age the result no longer counts (its checker stopped reporting).
    max_age: Option<Duration>,
    /// Something an operator must see that does not stop the process from serving.
    warning: bool,
}

/// The latest result of every check of the process. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    checks: Mutex<BTreeMap<String, Check>>,
    stopping: AtomicBool,
}

impl Health {
    /// Records the result of check `name`; `max_age` bounds how long it stays valid.
    pub fn set(&self, name: &str, ok: bool, detail: impl Into<String>, max_age: Option<Duration>) {
        if let Ok(mut checks) = self.0.checks.lock() {
            checks.insert(
                name.to_string(),
                Check {
                    ok,
                    detail: detail.into(),
                    at: Instant::now(),
                    max_age,
                    warning: false,
                },
            );
        }
    }

    /// Records a warning as check `name` (`None` clears it to ok): shown by `/readyz` with its
    /// detail, without making the process unready — some sagas need an operator, the others
    /// are served.
    pub fn warn(&self, name: &str, warning: Option<String>) {
        if let Ok(mut checks) = self.0.checks.lock() {
            checks.insert(
                name.to_string(),
                Check {
                    ok: warning.is_none(),
                    warning: warning.is_some(),
                    detail: warning.unwrap_or_default(),
                    at: Instant::now(),
                    max_age: None,
                },
            );
        }
    }

    /// Not ready from now on: the process is shutting down, and a load balancer should stop
    /// sending it requests before it stops answering them.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether every check passes, and the body `/readyz` answers with: each check's status and,
    /// for a failing one, why.
    pub fn report(&self) -> (bool, Value) {
        let now = Instant::now();
        let mut all_ok = !self.0.stopping.load(Ordering::Relaxed);
        let mut checks = Map::new();
        if let Ok(map) = self.0.checks.lock() {
            for (name, c) in map.iter() {
                let stale = c.max_age.is_some_and(|m| now.duration_since(c.at) > m);
                let entry = if stale {
                    all_ok = false;
                    json!({"status": "failing", "detail": format!(
                        "no result for {} s (the check is stuck)", now.duration_since(c.at).as_secs())})
                } else if c.ok {
                    json!({"status": "ok"})
                } else if c.warning {
                    json!({"status": "warning", "detail": c.detail})
                } else {
                    all_ok = false;
                    json!({"status": "failing", "detail": c.detail})
                };
                checks.insert(name.clone(), entry);
            }
        }
        if checks.is_empty() {
            // Nothing has reported yet: starting up.
            all_ok = false;
        }
        let mut body = json!({
            "status": if all_ok { "ready" } else { "not ready" },
            "checks": checks,
        });
        if self.0.stopping.load(Ordering::Relaxed) {
            body["detail"] = json!("shutting down");
        }
        (all_ok, body)
    }
}

/// Marks the process not ready as soon as `cancel` fires (shutdown has begun).
pub async fn not_ready_once(health: &Health, cancel: &CancellationToken) {
    cancel.cancelled().await;
    health.stopping();
}

/// Records check `name` as not yet answered, so that `/readyz` does not say "ready" between the
/// moment the other checks pass and this one's first result.
fn pending(health: &Health, name: &str) {
    health.set(name, false, "not checked yet", None);
}

/// Pings `db` until `cancel` fires, recording the result as check `name`. The check is
/// registered (as pending) when this is called, not when the returned task first runs.
pub fn watch_database(
    health: Health,
    name: String,
    db: Db,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    pending(&health, &name);
    async move {
        loop {
            let ok = matches!(tokio::time::timeout(DB_TIMEOUT, db.ping()).await, Ok(true));
            let detail = if ok {
                String::new()
            } else {
                format!("no answer to SELECT 1 within {} s", DB_TIMEOUT.as_secs())
            };
            health.set(&name, ok, detail, Some(DB_EVERY * 3 + DB_TIMEOUT));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DB_EVERY) => {}
            }
        }
    }
}

/// Asks the cluster for metadata through `producer` until `cancel` fires, recording the result
/// as check `name`. The request blocks, so it runs on the blocking pool. Registered as pending
/// when called, like [`watch_database`].
pub fn watch_broker(
    health: Health,
    name: String,
    producer: FutureProducer,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    pending(&health, &name);
    async move {
        loop {
            let p = producer.clone();
            let answer = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(None, BROKER_TIMEOUT)
                    .map(|m| m.brokers().len())
            })
            .await;
            let (ok, detail) = match answer {
                Ok(Ok(n)) if n > 0 => (true, String::new()),
                Ok(Ok(_)) => (false, "the cluster reported no brokers".to_string()),
                Ok(Err(e)) => (false, format!("no metadata from the brokers: {e}")),
                Err(e) => (false, format!("check failed: {e}")),
            };
            health.set(&name, ok, detail, Some(BROKER_EVERY * 3 + BROKER_TIMEOUT));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(BROKER_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes_and_not_while_stopping() {
        let h = Health::default();
        assert!(!h.report().0, "nothing reported yet");
        h.set("database", true, "", None);
        h.set("kafka", false, "no metadata", None);
        let (ok, body) = h.report();
        assert!(!ok);
        assert_eq!(body["checks"]["kafka"]["detail"], "no metadata");
        assert_eq!(body["checks"]["database"]["status"], "ok");
        h.set("kafka", true, "", None);
        assert!(h.report().0);
        h.set("stale", true, "", Some(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(2));
        assert!(!h.report().0, "a result past its age does not count");
        h.set("stale", true, "", None);
        assert!(h.report().0);
        h.warn("sagas", Some("3 sagas need create_order v1".into()));
        let (ok, body) = h.report();
        assert!(
            ok,
            "a warning is shown but does not make the process unready"
        );
        assert_eq!(body["checks"]["sagas"]["status"], "warning");
        assert_eq!(
            body["checks"]["sagas"]["detail"],
            "3 sagas need create_order v1"
        );
        h.warn("sagas", None);
        assert_eq!(h.report().1["checks"]["sagas"]["status"], "ok");
        pending(&h, "broker");
        let (ok, body) = h.report();
        assert!(!ok, "a registered check without a result yet is not ready");
        assert_eq!(body["checks"]["broker"]["detail"], "not checked yet");
        h.stopping();
        let (ok, body) = h.report();
        assert!(!ok);
        assert_eq!(body["detail"], "shutting down");
    }
}
